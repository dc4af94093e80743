from proximity.cli import main

raise SystemExit(main())
