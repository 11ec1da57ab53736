from sae1n.cli import main

raise SystemExit(main())
