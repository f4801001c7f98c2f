from evoked.cli import main

raise SystemExit(main())
