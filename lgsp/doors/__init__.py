"""The doors sector systems come in by: REST (OpenAPI) and SOAP (WSDL), both feeding the one pipeline."""
