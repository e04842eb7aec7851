from taskhub_unit.cli import main

raise SystemExit(main())
