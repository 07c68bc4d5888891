from linuxkit_py.cli import main

raise SystemExit(main())
