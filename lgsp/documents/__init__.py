"""The document exchange axis (issue 11): edXML packages, their signatures, the agency directory."""
