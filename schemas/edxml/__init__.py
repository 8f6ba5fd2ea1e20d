"""edXML (QCVN 102:2016/BTTTT) envelope schema: edxml.xsd."""
