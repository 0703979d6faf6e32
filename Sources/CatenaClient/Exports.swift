// The types of the client's API, so that `import CatenaClient` alone is enough to use it:
// keys, LSNs, object metadata, listing pages, the chain's configuration and `CatenaError`
// (CatenaCore), what `ChainAdmin` returns (CatenaWire), connection limits (CatenaNetwork), `ByteBuffer` (a put takes one) and
// `Logger` (a client takes one).
@_exported import CatenaCore
@_exported import struct CatenaNetwork.ConnectionLimits
@_exported import struct CatenaWire.ChainStatus
@_exported import struct CatenaWire.NodeStatus
@_exported import struct Logging.Logger
@_exported import struct NIOCore.ByteBuffer
