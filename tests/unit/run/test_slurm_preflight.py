"""The checks run before a Slurm submission (hizfo.run.slurm_preflight): a partition that exists, a time limit that holds
a checkpoint interval, and a clear line where there is no Slurm at all."""
from __future__ import annotations

import os
import stat

import pytest

from hizfo.errors import ConfigError
from hizfo.run.slurm_preflight import check_partition, check_timeout
from tests.conftest import ROOT


def test_timeout_shorter_than_the_checkpoint_interval_is_refused():
    check_timeout(60, 120, 30)                                  # 58 min before the signal >= 30
    with pytest.raises(ConfigError, match="timeout_min=20 leaves 18.0 min.*checkpoint_minutes=30"):
        check_timeout(20, 120, 30)
    with pytest.raises(ConfigError, match="signal_delay_s"):
        check_timeout(2, 120, None)
    with pytest.raises(ConfigError, match="must be > 0"):
        check_timeout(0, 120, None)


def test_a_partition_that_does_not_exist_is_refused_before_submission(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'debug\\ngpu\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    check_partition("gpu")
    check_partition(None)
    with pytest.raises(ConfigError, match="'nope' does not exist on this cluster; partitions: debug, gpu"):
        check_partition("nope")


def test_no_sinfo_means_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="not a Slurm login node"):
        check_partition("gpu")


# `sinfo -h -N -o '%P|%c|%m|%G'` as Slurm 23 prints it: the repository's one-node test cluster (2 CPUs, 16 GB,
# no GPUs; scripts/slurm/start_local_slurm.sh) as the default partition, and a GPU partition of two node types
RECORDED_SINFO = """\
debug*|2|16000|(null)
gpu|64|515000|gpu:a100:4(S:0-1)
gpu|32|257000|gpu:a100:2,gpu:v100:1(S:0)
misc|16|64000|mygpu:2
"""


def fake_sinfo(tmp_path, monkeypatch, nodes: str = RECORDED_SINFO, limits: str = "") -> None:
    """A `sinfo` on PATH that answers the partition query, the node query (-N) and the time-limit query (%l, empty
    unless ``limits`` is given) from recorded text."""
    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir(exist_ok=True)
    (tmp_path / "nodes.txt").write_text(nodes)
    (tmp_path / "limits.txt").write_text(limits)
    fake.write_text(f"""#!/bin/sh
case "$*" in
  *%l*) cat {tmp_path / 'limits.txt'} ;;
  *-N*) cat {tmp_path / 'nodes.txt'} ;;
  *) cut -d'|' -f1 {tmp_path / 'nodes.txt'} | tr -d '*' ;;
esac
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def test_gpus_are_counted_not_matched_as_a_substring():
    from hizfo.run.slurm_preflight import gpu_count
    assert [gpu_count(g) for g in ("gpu:4", "gpu:a100:4(S:0-1)", "gpu:a100:2,gpu:v100:1(S:0)", "(null)",
                                   "mygpu:2", "gpu:0", "gpu", "shard:8,gpu:h100:8(S:0,1)")] == [4, 4, 3, 0, 0, 0, 1, 8]


def test_the_recorded_sinfo_text_is_read_node_by_node():
    from hizfo.run.slurm_preflight import parse_nodes
    nodes = parse_nodes(RECORDED_SINFO + "garbage line\n")
    assert [(n.partition, n.default, n.cpus, n.mem_mb, n.gpus) for n in nodes] == [
        ("debug", True, 2, 16000, 0), ("gpu", False, 64, 515000, 4), ("gpu", False, 32, 257000, 3),
        ("misc", False, 16, 64000, 0)]


@pytest.mark.parametrize("asked,expected", [
    # the launcher's defaults (8 CPUs, 64 GB, 1 GPU) on the 2-CPU default partition: the CPUs are named first
    (dict(partition=None, cpus_per_task=8, mem_gb=64, gpus_per_node=1),
     "hydra.launcher.cpus_per_task=8: the default partition 'debug' has at most 2 CPUs a node (sinfo); "),
    (dict(partition="debug", cpus_per_task=1, tasks_per_node=4),
     "hydra.launcher.cpus_per_task=1 x tasks_per_node=4: partition 'debug' has at most 2 CPUs a node"),
    (dict(partition="debug", cpus_per_task=2, mem_gb=64),
     "hydra.launcher.mem_gb=64: partition 'debug' has at most 16000 MB (15.6 GB) a node (sinfo); lower "
     "hydra.launcher.mem_gb to <= 15, set it to null"),
    (dict(partition="debug", cpus_per_task=1, gpus_per_node=1),
     "hydra.launcher.gpus_per_node=1: partition 'debug' has no GPUs (sinfo %G: (null)); pick a GPU partition"),
    (dict(partition="misc", gpus_per_node=1),                    # 'mygpu' is not a GPU
     "hydra.launcher.gpus_per_node=1: partition 'misc' has no GPUs (sinfo %G: mygpu:2)"),
    (dict(partition="gpu", cpus_per_task=8, mem_gb=64, gpus_per_node=8),
     "hydra.launcher.gpus_per_node=8: partition 'gpu' has at most 4 GPUs a node"),
    (dict(partition="gpu", cpus_per_task=48, mem_gb=64, gpus_per_node=3),   # 64 CPUs has 4 GPUs: fits
     None),
    (dict(partition="gpu", cpus_per_task=48, mem_gb=300, gpus_per_node=3),
     None),
    (dict(partition="debug,gpu", cpus_per_task=8, mem_gb=64, gpus_per_node=1), None),   # any of the two
    (dict(partition="gpu", cpus_per_task=48, mem_gb=503, gpus_per_node=1),
     "hydra.launcher.mem_gb=503: partition 'gpu' has at most 515000 MB (502.9 GB) a node (sinfo); lower hydra.launcher.mem_gb to <= 502"),
    (dict(partition="debug", cpus_per_task=2, mem_gb=15), None),
])
def test_what_a_job_asks_must_fit_the_partitions_largest_node(asked, expected):
    from hizfo.run.slurm_preflight import check_resources, parse_nodes
    nodes = parse_nodes(RECORDED_SINFO)
    if expected is None:
        check_resources(nodes, **asked)
        return
    with pytest.raises(ConfigError) as caught:
        check_resources(nodes, **asked)
    # the first problem first; every further line is another key's problem (all reported at once)
    first, *others = str(caught.value).splitlines()
    assert first.startswith(expected), str(caught.value)
    assert all(line.startswith("hydra.launcher.") for line in others), str(caught.value)
    assert len(others) == (2 if asked.get("partition") is None else 0), str(caught.value)


def test_no_single_node_holding_everything_at_once_is_refused():
    from hizfo.run.slurm_preflight import check_resources, parse_nodes
    nodes = parse_nodes("big|64|16000|(null)\nfat|4|515000|(null)\n")
    with pytest.raises(ConfigError, match=r"^hydra\.launcher: no node of partition 'big,fat' has 32 CPUs, 100 GB "
                                          r"and 0 GPUs at once"):
        check_resources(nodes, "big,fat", cpus_per_task=32, mem_gb=100)


def test_the_callback_refuses_the_launchers_defaults_on_a_two_cpu_node_before_sbatch(tmp_path, monkeypatch, capsys):
    """The Hydra callback with conf/launcher/slurm.yaml's values on the recorded cluster: exit 2, one line."""
    from omegaconf import OmegaConf
    from hizfo.run.slurm_preflight import SlurmPreflight
    fake_sinfo(tmp_path, monkeypatch)
    launcher = OmegaConf.load(ROOT / "conf" / "launcher" / "slurm.yaml").hydra.launcher
    launcher._target_ = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    config = OmegaConf.create({"hydra": {"launcher": launcher}})
    with pytest.raises(SystemExit) as exited:
        SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("error: hydra.launcher.cpus_per_task=8: the default partition 'debug' has at most 2 CPUs a "
                      "node (sinfo); lower hydra.launcher.cpus_per_task or pick another partition")
    assert [line.split("=")[0] for line in err[1:]] == ["error: hydra.launcher.mem_gb",
                                                        "error: hydra.launcher.gpus_per_node"]   # all at once
    config.hydra.launcher.partition = "gpu"                     # the defaults fit a GPU node: no exit
    SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)


@pytest.mark.subprocess
@pytest.mark.slow
def test_run_py_with_the_launchers_defaults_on_a_two_cpu_node_stops_before_sbatch(tmp_path, monkeypatch):
    """``python run.py -m launcher=slurm`` as a user types it, on the recorded cluster: one line, exit 2, and the
    `sbatch` on PATH is never called."""
    import subprocess
    import sys
    fake_sinfo(tmp_path, monkeypatch)
    called = tmp_path / "sbatch-called"
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.run([sys.executable, "run.py", "-m", "launcher=slurm", "logger=none",
                           f"results_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == ("error: hydra.launcher.cpus_per_task=8: the default partition 'debug' has at most 2 CPUs a "
                        "node (sinfo); lower hydra.launcher.cpus_per_task or pick another partition")
    assert [line.split("=")[0] for line in lines[1:]] == ["error: hydra.launcher.mem_gb",
                                                          "error: hydra.launcher.gpus_per_node"], lines
    assert not called.exists() and not (tmp_path / "sweep").exists()


def test_the_preflight_reports_every_problem_in_one_message(tmp_path, monkeypatch, capsys):
    """CPUs, memory, GPUs and the timeout wrong at once: one message naming all four keys, exit 2 (one try, not
    four submissions)."""
    from omegaconf import OmegaConf
    from hizfo.run.slurm_preflight import SlurmPreflight
    fake_sinfo(tmp_path, monkeypatch)
    launcher = OmegaConf.load(ROOT / "conf" / "launcher" / "slurm.yaml").hydra.launcher
    launcher._target_ = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    launcher.timeout_min = 20                                  # 18 min before the signal < 30 min checkpoints
    config = OmegaConf.create({"hydra": {"launcher": launcher}})
    with pytest.raises(SystemExit) as exited:
        SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[1].strip().split("=")[0] for line in err] == [
        "hydra.launcher.timeout_min", "hydra.launcher.cpus_per_task", "hydra.launcher.mem_gb",
        "hydra.launcher.gpus_per_node"], err
    assert all(line.startswith("error: ") for line in err)


def test_submitit_slurm_chosen_directly_is_refused_in_one_line(capsys):
    """``hydra/launcher=submitit_slurm`` skips the pre-flight, requeue and timeouts: refused, pointing at
    launcher=slurm; with the pre-flight callback present it passes."""
    from omegaconf import OmegaConf
    from hizfo.run.sweep_summary import refuse_unchecked_slurm
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    bare = OmegaConf.create({"hydra": {"launcher": {"_target_": target}, "callbacks": {"sweep_summary": {}}}})
    with pytest.raises(SystemExit) as exited:
        refuse_unchecked_slurm(bare)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "launcher=slurm" in err[0] and err[0].startswith("error: hydra/launcher=submitit_slurm")
    checked = OmegaConf.create({"hydra": {"launcher": {"_target_": target},
                                          "callbacks": {"slurm_preflight": {}, "sweep_summary": {}}}})
    refuse_unchecked_slurm(checked)


def test_slurm_job_names_carry_the_method_and_the_task():
    """launcher=slurm submits one array per method x task, named hizfo-<method>-<task> (squeue shows what runs)."""
    from hydra.utils import instantiate
    from hizfo.run.session import compose
    from hizfo.run.slurm_launcher import NamedSlurmLauncher, group_jobs
    sweep = [["method=hizfo", "task=scitldr", "seed=0"], ["method=mezo", "task=scitldr"],
             ["method=hizfo", "task=scitldr", "seed=1"], ["task=dialogsum"]]
    assert group_jobs(sweep, {"method": "hizfo", "task": "toy"}) == {
        "hizfo-hizfo-scitldr": [0, 2], "hizfo-mezo-scitldr": [1], "hizfo-hizfo-dialogsum": [3]}
    cfg = compose(["launcher=slurm"], hydra=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hizfo_launcher.named_slurm.NamedSlurmLauncher"
    launcher = instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, NamedSlurmLauncher) and launcher.params["name"] == "hizfo"


H100_SINFO = "debug*|2|16000|(null)\ngpu|64|515000|gpu:h100:8(S:0-1)\nodd|64|515000|gpu:4\n"


def _sweep(partition: str, cells: list[str]):
    from omegaconf import OmegaConf
    launcher = OmegaConf.load(ROOT / "conf" / "launcher" / "slurm.yaml").hydra.launcher
    launcher._target_ = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    launcher.partition, launcher.cpus_per_task, launcher.mem_gb = partition, 8, 64
    return OmegaConf.create({"hydra": {"launcher": launcher, "sweeper": {"params": {}},
                                       "overrides": {"task": cells + ["task=scitldr", "logger=none"]}}})


def test_gres_types_name_their_gpu_memory():
    from hizfo.run.plan_gpu import gres_memory_gb
    assert [gres_memory_gb(g) for g in ("gpu:h100:8(S:0-1)", "gpu:a100_80gb:4", "gpu:a100:2,gpu:v100:1",
                                            "gpu:4", "gpu:weird:2", "(null)")] == [80, 80, 16, None, None, None]


@pytest.mark.slow
def test_every_cell_of_a_sweep_that_cannot_fit_the_partitions_gpus_is_refused_at_once(tmp_path, monkeypatch, capsys):
    """A fake sinfo with 8 x H100 nodes: Full FT and Hi-ZFO on OPT-13B cannot fit 80 GiB at world size 1, OPT-350m
    can; both refusals in one message with the prediction, the GPU memory and a world size that fits; exit 2."""
    from hizfo.run.slurm_preflight import SlurmPreflight
    fake_sinfo(tmp_path, monkeypatch, H100_SINFO)
    monkeypatch.delenv("HIZFO_PLAN_ENFORCE", raising=False)
    config = _sweep("gpu", ["model=opt-350m,opt-13b", "method=full_ft,hizfo"])
    with pytest.raises(SystemExit) as exited:
        SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert all("model=opt-13b" in line and "exceeds the 78.19 GiB usable of a 79.19 GiB GPU" in line and "world size" in line and
               "predicted peak" in line for line in err[:2]), err
    assert "method=full_ft" in err[0] and "method=hizfo" in err[1]
    assert err[2].startswith("error: 2 of 4 cells cannot fit the 78.19 GiB usable of a 79.19 GiB GPU (1.00 GiB "
                             "headroom) at world size 1")
    monkeypatch.setenv("HIZFO_PLAN_ENFORCE", "0")                # overridden: warned, submitted
    SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)
    assert capsys.readouterr().err.count("warning: ") == 3


@pytest.mark.slow
def test_a_stated_gpu_size_and_an_unknown_gres_type(tmp_path, monkeypatch, capsys):
    """Untyped gres (gpu:4): not checked, one warning naming the key; with gpu_gb=24 stated, OPT-1.3B Full FT is
    refused, and plan_enforce=false only warns."""
    from hizfo.run.slurm_preflight import SlurmPreflight
    fake_sinfo(tmp_path, monkeypatch, H100_SINFO)
    monkeypatch.delenv("HIZFO_PLAN_ENFORCE", raising=False)
    config = _sweep("odd", ["model=opt-1.3b", "method=full_ft"])
    SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)
    assert "hydra.callbacks.slurm_preflight.gpu_gb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        SlurmPreflight(checkpoint_minutes=30, gpu_gb=24).on_multirun_start(config)
    err = capsys.readouterr().err.strip().splitlines()
    # a 24 GB GPU as torch reports it (23.76 GiB), less the headroom; the line names what would fit
    assert "exceeds the 22.76 GiB usable of a 23.76 GiB GPU" in err[0] and \
        ("precision=bf16" in err[0] or "world size" in err[0]), err
    SlurmPreflight(checkpoint_minutes=30, gpu_gb=24, plan_enforce=False).on_multirun_start(config)
    assert capsys.readouterr().err.startswith("warning: model=opt-1.3b")
    with pytest.raises(ConfigError, match="gpu_gb: must be > 0"):
        SlurmPreflight(gpu_gb=0)


def test_multinode_ranks_take_one_gpu_each():
    from hizfo.run.slurm_preflight import check_ranks_per_gpu
    check_ranks_per_gpu(8, 8)
    check_ranks_per_gpu(1, 8)              # one rank driving a node's GPUs (model.device_map=auto)
    check_ranks_per_gpu(2, 0)              # a CPU partition: gloo ranks
    with pytest.raises(ConfigError, match="tasks_per_node: 8 ranks per node but gpus_per_node is 4"):
        check_ranks_per_gpu(8, 4)


def test_the_multinode_launcher_asks_one_task_per_gpu():
    from hizfo.run.session import compose
    launcher = compose(["launcher=slurm_multinode"], hydra=True).hydra.launcher
    assert launcher.nodes == 2 and launcher.tasks_per_node == launcher.gpus_per_node == 8


def test_a_cell_composes_inside_an_initialised_hydra_as_the_callback_does():
    """The pre-flight runs inside run.py's @hydra.main, where a second initialisation is refused: the one composer
    (hizfo.run.session.compose) goes through the Hydra in force, and gives what it gives outside."""
    from hydra import initialize_config_dir
    from hizfo.run.plan_slurm import compose_cell
    from hizfo.run.session import CONF_DIR, VERSION_BASE, compose
    cell = ["model=opt-13b", "method=hizfo", "task=scitldr"]
    outside = compose(cell)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=VERSION_BASE):
        inside = compose_cell(cell)
    assert inside == outside and inside.model.name == "opt-13b"


@pytest.mark.slow
def test_a_cell_whose_global_batch_the_jobs_ranks_cannot_split_is_refused_before_sbatch(tmp_path, monkeypatch,
                                                                                       capsys):
    """2 nodes x 2 ranks = 4 ranks: the toy task's batch 4 splits, batch 6 does not; every such cell is named in the
    one message (with the other problems), exit 2, before any job queues."""
    from hizfo.run.slurm_preflight import SlurmPreflight, batch_problems
    fake_sinfo(tmp_path, monkeypatch)
    config = _sweep("debug", ["task.batch_size=4,6,8"])
    config.hydra.overrides.task = ["task.batch_size=4,6,10", "logger=none"]
    config.hydra.launcher.nodes, config.hydra.launcher.tasks_per_node = 2, 2
    config.hydra.launcher.cpus_per_task, config.hydra.launcher.gpus_per_node = 1, 0
    problems = batch_problems(config)
    assert [p.split(":")[0] for p in problems] == ["task.batch_size=6 logger=none", "task.batch_size=10 logger=none"]
    assert "does not split over the job's 4 ranks" in problems[0] and "multiple of 4" in problems[0]
    with pytest.raises(SystemExit) as exited:
        SlurmPreflight(checkpoint_minutes=30).on_multirun_start(config)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("does not split over the job's 4 ranks") == 2 and "error: task.batch_size=6" in err, err
    config.hydra.launcher.tasks_per_node = 1                     # one rank a node, 2 nodes: 6 and 10 split
    assert batch_problems(config) == []


def test_a_timeout_over_the_partitions_time_limit_is_refused_before_sbatch(tmp_path, monkeypatch):
    """sbatch accepts a job longer than its partition's MaxTime, which then pends for ever (PartitionTimeLimit):
    refused in one line naming the limit; the default partition when none is named; any of a list that fits."""
    from hizfo.run.slurm_preflight import check_partition_time, slurm_minutes
    assert [slurm_minutes(t) for t in ("45", "30:00", "1:00:00", "2-12", "1-00:30", "1-00:00:00", "infinite",
                                       "UNLIMITED", "n/a")] == [45, 30, 60, 3600, 1470, 1440, None, None, None]
    fake_sinfo(tmp_path, monkeypatch, limits="debug*|30:00\ngpu|2-00:00:00\nmisc|infinite\n")
    with pytest.raises(ConfigError, match=r"^hydra.launcher.timeout_min=60 exceeds the time limit of partition "
                                          r"debug \(30 min, sinfo %l\)"):
        check_partition_time(None, 60)                     # the default partition
    check_partition_time("gpu", 60)
    check_partition_time("misc", 10**6)                    # no limit
    check_partition_time("debug,gpu", 60)                  # gpu can take it
    with pytest.raises(ConfigError, match="exceeds the time limit of partition gpu"):
        check_partition_time("gpu", 3000)
    fake_sinfo(tmp_path, monkeypatch)                      # a sinfo that prints no limits: nothing to check
    check_partition_time(None, 10**6)
