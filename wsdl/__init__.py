"""WSDL and XSD files: the SOAP contracts (installed as lgsp_wsdl)."""
