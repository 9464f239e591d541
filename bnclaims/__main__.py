from bnclaims.cli import main

raise SystemExit(main())
