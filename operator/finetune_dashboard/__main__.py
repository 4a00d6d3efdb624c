from finetune_dashboard.main import main

raise SystemExit(main())
