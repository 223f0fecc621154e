"""Pipeline stages. Each module has ``run(cfg, paths)`` and a thin ``main()`` that reads params.yaml."""
