__version__ = "0.2.0.dev0"  # the next minor release, in the making ([Unreleased] in CHANGELOG.md)
