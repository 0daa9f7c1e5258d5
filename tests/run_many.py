"""Run several ``python run.py ARGS`` command lines in one process (the tests' way to try many bad inputs fast).

Reads one JSON list of arguments a line on stdin and prints one JSON line a case: the exit status ``call_main``
returns (as ``python run.py`` would exit with), its stderr and stdout, and whether ``hizfo.core.models.load_model`` was
called. The code path is run.py's own: ``main`` under ``hizfo.run.cli.call_main``; only the interpreter start (torch,
transformers: most of a bad command's time) is shared.

    python -m tests.run_many < cases.jsonl      # from the repository root
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path


def main() -> None:
    import hydra

    import hizfo.core.models
    import run as entry
    from hizfo.run.cli import call_main
    from hizfo.run.session import VERSION_BASE

    real_load = hizfo.core.models.load_model
    calls: list[str] = []

    def load_model(*args, **kwargs):
        calls.append(str(kwargs.get("name")))
        return real_load(*args, **kwargs)

    hizfo.core.models.load_model = load_model        # run.py imports it from the module at call time
    # run.py's task function under Hydra as `python run.py` has it, conf/ named by its absolute path
    task = hydra.main(version_base=VERSION_BASE, config_path=str(Path(entry.__file__).parent / "conf"),
                      config_name="config")(entry.main.__wrapped__)
    for line in sys.stdin:
        sys.argv = ["run.py", *json.loads(line)]
        calls.clear()
        err, out = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                status = call_main(task)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
        print(json.dumps({"args": sys.argv[1:], "status": status, "stderr": err.getvalue(), "stdout": out.getvalue(),
                          "model_loaded": bool(calls), "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
