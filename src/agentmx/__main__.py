from agentmx.cli import main

raise SystemExit(main())
