"""Package data only: installed as `jaxsal._bundled` (see [tool.setuptools.package-dir] in
pyproject.toml) so that `importlib.resources.files("jaxsal._bundled")` finds the bundled weights in
editable and regular installs alike. This file exists because setuptools' editable finder only
maps a folder that is a regular package. No code here; see weights/README.md."""
