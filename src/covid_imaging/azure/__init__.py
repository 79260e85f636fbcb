"""Azure Blob Storage support: credentials and log redaction (``credentials``), the
cached raw-image dataset (``dataset.CachedBlobImageDataset``), the upload command
(``python -m covid_imaging.azure.upload``) and an Azurite launcher for tests (``azurite``).

Submodules are not imported here, so ``import covid_imaging`` never pulls in the SDK.
"""
