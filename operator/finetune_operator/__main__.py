from finetune_operator.main import main

raise SystemExit(main())
