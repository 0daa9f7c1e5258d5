"""One module per baseline method. hizfo/registry.py names each (its config's ``_target_``); importing this
package registers nothing and loads no method."""
