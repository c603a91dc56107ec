"""Small helpers shared by the tools and the package: atomic output files and folders."""
