"""The protocol core stays sans-IO: importing it pulls in no asyncio, socket or
selectors (docs/architecture.md "Layers")."""

import pkgutil
import subprocess
import sys

import vuser.protocol


def test_protocol_modules_import_no_io_machinery():
    modules = sorted(f"vuser.protocol.{m.name}" for m in pkgutil.iter_modules(vuser.protocol.__path__))
    assert {"vuser.protocol.connection", "vuser.protocol.server"} <= set(modules)
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        "bad = sorted(m for m in ('asyncio', 'socket', 'selectors', 'select') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported by vuser.protocol: {out.stdout.strip()}"
