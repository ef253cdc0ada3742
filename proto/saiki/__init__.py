"""saiki: one import namespace over the repository's top-level folders.

The wire types are ``saiki.v1`` (generated into ``proto/saiki/v1``); the layers are
``saiki.core``, ``saiki.batch``, ``saiki.speed``, ``saiki.serving``, ``saiki.feature_repo``,
``saiki.ops``, ``saiki.cli`` and ``saiki.simulator``. A wheel holds them all inside this
package. A source checkout keeps each layer in its own top-level folder, as the design
fixes; the editable install maps the names onto those folders, and for interpreters that
never run the install's import hook (Flink's embedded Python skips ``.pth`` files) this
package also searches the checkout's root for its subpackages.
"""

from pathlib import Path as _Path

_CHECKOUT = _Path(__file__).resolve().parent.parent.parent
if (_CHECKOUT / "feature_repo" / "spec.py").is_file() and str(_CHECKOUT) not in __path__:
    __path__.append(str(_CHECKOUT))
