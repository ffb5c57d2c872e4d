"""Sans-I/O codecs: Thrift framing, Thrift messages and the JSON mapping. No sockets here."""
