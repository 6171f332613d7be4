"""A pytest plugin: every Session that would step eagerly steps through the graph's body without capture ("static")
instead, so a test file run with it (`-p static_step_plugin`) checks its promises on the path a GPU captures."""

import resnet.session as session

_pick = session.pick_step_mode


def _static(name, device, compiled):
    return "static" if name == "auto" and not compiled else _pick(name, device, compiled)


session.pick_step_mode = _static
