"""`mlserver start`, as `serve` runs it: ready only with models, non-zero when one fails to load.

Run as a script by MLServer's own Python (serving/mlserver.py's `serve_command`), so it imports
nothing but MLServer and the standard library: the environment may be another virtualenv
(the image emulation) where the toolkit is not installed.

Two faults of MLServer (1.5 and 1.7) are mended here, for local serving only:
- after a model fails to load, MLServer removes it and shuts down, and meanwhile
  `/v2/health/ready` answers 200 (`all([])` over no models; SeldonIO/MLServer#2056): here
  the server is ready only when it has models and all of them are ready;
- it then exits with 0 (1.7) or with 1 through an unrelated TypeError in uvicorn (1.5): here
  the exit code is EXIT_MODEL_NOT_LOADED whenever fewer models were loaded than configured.
"""

from __future__ import annotations

import sys

EXIT_MODEL_NOT_LOADED = 3


def main() -> int:
    from mlserver.cli.main import main as mlserver_main
    from mlserver.handlers.dataplane import DataPlane
    from mlserver.server import MLServer

    missing: list[str] = []

    async def ready(self) -> bool:
        models = list(await self._model_registry.get_models())
        return bool(models) and all(model.ready for model in models)

    start = MLServer.start

    async def checked_start(self, models_settings=()):  # MLServer's signature, [] by default
        try:
            await start(self, list(models_settings))
        finally:
            loaded = {model.name for model in await self._model_registry.get_models()}
            missing.extend(s.name for s in models_settings if s.name not in loaded)

    DataPlane.ready = ready
    MLServer.start = checked_start
    sys.argv[0] = "mlserver"
    try:
        mlserver_main()  # a click command: ends with SystemExit
    except SystemExit as end:
        if not missing:
            raise
        code = end.code
    except Exception as error:  # MLServer 1.5: uvicorn's TypeError once a load failed
        if not missing:
            raise
        code = f"{type(error).__name__}: {error}"
    print(
        f"MLServer stopped ({code}): model(s) {missing} could not be loaded (see above)",
        file=sys.stderr,
    )
    return EXIT_MODEL_NOT_LOADED


if __name__ == "__main__":
    sys.exit(main())
