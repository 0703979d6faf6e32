/// What a store, a node and the client know about an object without its bytes: the answer to
/// a head request and one entry of a listing.
public struct ObjectInfo: Hashable, Sendable {
    /// The object's key.
    public var key: Key
    /// The LSN of the record that made this version.
    public var lsn: LSN
    /// Size in bytes.
    public var size: UInt64
    /// XXH3-64 of the content, computed by the writer.
    public var contentChecksum: UInt64
    /// The content type, if one was given.
    public var contentType: String?
    /// User metadata.
    public var userMetadata: [String: String]
    /// Head-assigned time of the write, ns since 1970.
    public var timestamp: UInt64
    /// The client request that wrote it.
    public var requestID: RequestID
    /// Number of chunks for a chunked object, 0 for a single-record object.
    public var chunkCount: Int
    /// A multipart object's parts (size and checksum each, in order), over which its
    /// ``contentChecksum`` is defined (``Manifest/checksum(ofParts:)``); empty for any other
    /// object. Listings leave it empty.
    public var parts: [PartSummary]

    /// Creates an object description.
    public init(key: Key, lsn: LSN, size: UInt64, contentChecksum: UInt64, contentType: String? = nil,
                userMetadata: [String: String] = [:], timestamp: UInt64 = 0, requestID: RequestID = .none,
                chunkCount: Int = 0, parts: [PartSummary] = []) {
        self.key = key
        self.lsn = lsn
        self.size = size
        self.contentChecksum = contentChecksum
        self.contentType = contentType
        self.userMetadata = userMetadata
        self.timestamp = timestamp
        self.requestID = requestID
        self.chunkCount = chunkCount
        self.parts = parts
    }
}

/// One page of a listing.
public struct ListPage: Hashable, Sendable {
    /// The objects, in byte order of their keys.
    public var objects: [ObjectInfo]
    /// With a delimiter: the keys that hold it after the prefix, each cut just after its first
    /// such delimiter and listed once — as S3 lists "folders" — in byte order. Empty otherwise.
    public var commonPrefixes: [Key]
    /// Pass as `after` to get the next page; nil when this was the last page.
    public var nextCursor: Key?

    /// Creates a page.
    public init(objects: [ObjectInfo], commonPrefixes: [Key] = [], nextCursor: Key?) {
        self.objects = objects
        self.commonPrefixes = commonPrefixes
        self.nextCursor = nextCursor
    }
}
