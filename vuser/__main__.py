from vuser.cli import main

raise SystemExit(main())
