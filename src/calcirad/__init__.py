"""calcirad: radiomics of calcific soft-tissue masses (tumoral calcinosis vs sarcoma and mimics).

Coordinate conventions used throughout the package:
- DICOM and SimpleITK work in LPS (x to patient Left, y to Posterior, z to Superior), millimetres.
- NIfTI files on disk carry RAS affines (nibabel); SimpleITK converts on read/write.
- CT in Hounsfield units (HU), PET in SUV (body weight unless stated), MR in scanner units.
"""

__version__ = "0.1.0"
