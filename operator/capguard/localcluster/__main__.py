from capguard.localcluster import main

raise SystemExit(main())
