"""The CLI's logging: QMP's connection chatter stays out of a run's output unless -v."""

from __future__ import annotations

import logging

import pytest

from vuser import cli


@pytest.mark.parametrize("argv, level", [(["doctor", "--help"], logging.WARNING),
                                         (["-v", "doctor", "--help"], logging.DEBUG)])
def test_qmp_info_lines_only_with_verbose(monkeypatch, argv, level):
    seen = {}

    def fake_run(args):
        seen["level"] = logging.getLogger("qemu.qmp").level
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(_run=fake_run)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(_run=fake_run)
    assert cli.main([a for a in argv if a != "--help"]) == 0
    assert seen["level"] == level
    logging.getLogger("qemu.qmp").setLevel(logging.NOTSET)
