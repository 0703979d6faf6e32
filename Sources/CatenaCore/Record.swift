/// The kind of a log record. A struct, not an enum, so that unknown kinds can be named in errors;
/// only the kinds below are understood by this build.
public struct RecordType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// `key = value`: a whole object in one record.
    public static let put = RecordType(rawValue: 1)
    /// `delete key`: a tombstone.
    public static let delete = RecordType(rawValue: 2)
    /// One chunk of a large object, addressed by (upload id, index); invisible on its own.
    public static let chunk = RecordType(rawValue: 3)
    /// The manifest that makes a chunked upload visible as `key`.
    public static let manifest = RecordType(rawValue: 4)
    /// A fence: the write with this record's request id is settled as not applied, and every
    /// later copy of it is refused. Changes no object; `key` is the write's, the value empty.
    public static let fence = RecordType(rawValue: 5)

    /// The kinds this build understands.
    public static let known: Set<RecordType> = [.put, .delete, .chunk, .manifest, .fence]

    /// Whether a record of this kind is a version of its key (a put, a manifest, a delete);
    /// chunks and fences are not.
    public var isVersion: Bool { self == .put || self == .manifest || self == .delete }

    public var description: String {
        switch self {
        case .put: "put"
        case .delete: "delete"
        case .chunk: "chunk"
        case .manifest: "manifest"
        case .fence: "fence"
        default: "type(\(rawValue))"
        }
    }
}

/// One tagged field of a record's extension area.
///
/// A reader that meets a tag it does not know skips the field if it is "may skip" and refuses
/// the record with ``CatenaError/Code/unknownMustUnderstandField`` if it is "must understand".
/// Unknown may-skip fields are kept byte for byte, so records pass through older nodes intact.
public struct RecordExtension: Hashable, Sendable {
    /// The field's tag.
    public var tag: UInt16
    /// Whether a reader that does not know `tag` must refuse the record.
    public var mustUnderstand: Bool
    /// The field's bytes.
    public var value: [UInt8]

    /// Creates a field.
    public init(tag: UInt16, mustUnderstand: Bool, value: [UInt8]) {
        self.tag = tag
        self.mustUnderstand = mustUnderstand
        self.value = value
    }

    /// Tag of the object's content type (UTF-8, may skip).
    public static let contentTypeTag: UInt16 = 1
    /// Tag of one user metadata entry (u16 name length, name, value; may skip).
    public static let userMetadataTag: UInt16 = 2
    /// Tag of a chunk's address: upload id (16 bytes) and index (u32); must understand.
    public static let chunkAddressTag: UInt16 = 3

    /// The tags this build understands.
    public static let knownTags: Set<UInt16> = [contentTypeTag, userMetadataTag, chunkAddressTag]
}

/// Where a chunk belongs: its upload and its position in it.
public struct ChunkAddress: Hashable, Sendable {
    /// The upload the chunk belongs to.
    public var upload: UploadID
    /// The chunk's index, from 0.
    public var index: UInt32

    /// Creates an address.
    public init(upload: UploadID, index: UInt32) {
        self.upload = upload
        self.index = index
    }
}

/// The body of a manifest record: which upload becomes the object, in how many chunks.
public struct Manifest: Hashable, Sendable {
    /// The upload whose chunks form the object.
    public var upload: UploadID
    /// How many chunks (indices `0..<chunkCount`).
    public var chunkCount: UInt32
    /// The object's total size in bytes (the sum of the chunks' sizes).
    public var totalSize: UInt64

    /// Creates a manifest body.
    public init(upload: UploadID, chunkCount: UInt32, totalSize: UInt64) {
        self.upload = upload
        self.chunkCount = chunkCount
        self.totalSize = totalSize
    }

    /// The encoded size of a manifest body.
    public static let encodedSize = 28

    /// The manifest's bytes (a manifest record's value).
    public func encoded() -> [UInt8] {
        var out = ByteWriter(capacity: Manifest.encodedSize)
        out.u64(upload.high); out.u64(upload.low); out.u32(chunkCount); out.u64(totalSize)
        return out.bytes
    }

    /// Parses a manifest record's value.
    public init<Bytes: Collection<UInt8>>(decoding bytes: Bytes) throws(CatenaError) {
        let array = Array(bytes)
        guard array.count == Manifest.encodedSize else {
            throw CatenaError(.malformed, "manifest body is \(array.count) bytes, expected \(Manifest.encodedSize)")
        }
        var r = ByteReader(array)
        self.upload = RequestID(high: r.u64(), low: r.u64())
        self.chunkCount = r.u32()
        self.totalSize = r.u64()
    }
}

/// A logical log record: "put K = V at LSN L", "delete K at L", a chunk, or a manifest.
///
/// Everything nondeterministic (LSN, timestamp) is decided by the head before the record is
/// encoded; followers store and forward the encoded bytes unchanged (see ``EncodedRecord``).
public struct Record: Hashable, Sendable {
    /// What the record does.
    public var type: RecordType
    /// The chain the record belongs to.
    public var chainID: ChainID
    /// The object key.
    public var key: Key
    /// The record's position in the chain's history.
    public var lsn: LSN
    /// Head-assigned wall-clock time, nanoseconds since 1970.
    public var timestamp: UInt64
    /// The client request that caused the write (for exactly-once retries).
    public var requestID: RequestID
    /// XXH3-64 of the object's content, computed by the writer: of `value` for a put, of the
    /// whole object for a manifest, of the chunk for a chunk, 0 for a delete.
    public var contentChecksum: UInt64
    /// Tagged extension fields (content type, user metadata, chunk address, later additions).
    public var extensions: [RecordExtension]
    /// The value bytes (object, chunk or manifest body; empty for a delete).
    public var value: [UInt8]

    /// Creates a record. `contentChecksum` defaults to the XXH3-64 of `value`.
    public init(
        type: RecordType,
        chainID: ChainID = 0,
        key: Key,
        lsn: LSN,
        timestamp: UInt64 = 0,
        requestID: RequestID = .none,
        contentChecksum: UInt64? = nil,
        extensions: [RecordExtension] = [],
        value: [UInt8] = []
    ) {
        self.type = type
        self.chainID = chainID
        self.key = key
        self.lsn = lsn
        self.timestamp = timestamp
        self.requestID = requestID
        self.contentChecksum = contentChecksum ?? (type == .delete ? 0 : XXH3.hash(value))
        self.extensions = extensions
        self.value = value
    }

    /// The content type, if the record has one.
    public var contentType: String? {
        get {
            extensions.first { $0.tag == RecordExtension.contentTypeTag }.map { String(decoding: $0.value, as: UTF8.self) }
        }
        set {
            extensions.removeAll { $0.tag == RecordExtension.contentTypeTag }
            if let newValue { extensions.append(RecordExtension.contentType(newValue)) }
        }
    }

    /// User metadata entries, in the order they were added.
    public var userMetadata: [(name: String, value: String)] {
        get { RecordExtension.userMetadata(in: extensions) }
        set {
            extensions.removeAll { $0.tag == RecordExtension.userMetadataTag }
            for (name, value) in newValue {
                extensions.append(RecordExtension.userMetadata(name: name, value: value))
            }
        }
    }

    /// The chunk address of a chunk record.
    public var chunkAddress: ChunkAddress? {
        get { RecordExtension.chunkAddress(in: extensions) }
        set {
            extensions.removeAll { $0.tag == RecordExtension.chunkAddressTag }
            if let newValue { extensions.append(RecordExtension.chunkAddress(newValue)) }
        }
    }
}

extension RecordExtension {
    /// An object's content type and user metadata as record fields, in the one order every
    /// writer uses (the content type, then the metadata by the UTF-8 bytes of their names).
    public static func objectFields(contentType: String?, metadata: [String: String]) -> [RecordExtension] {
        let sorted = metadata.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        let type = contentType.map { [RecordExtension.contentType($0)] } ?? []
        return type + sorted.map { RecordExtension.userMetadata(name: $0.key, value: $0.value) }
    }

    /// A content type field.
    public static func contentType(_ type: String) -> RecordExtension {
        RecordExtension(tag: contentTypeTag, mustUnderstand: false, value: Array(type.utf8))
    }

    /// A user metadata field.
    public static func userMetadata(name: String, value: String) -> RecordExtension {
        var out = ByteWriter(capacity: 2 + name.utf8.count + value.utf8.count)
        out.u16(UInt16(truncatingIfNeeded: name.utf8.count))
        out.bytes.append(contentsOf: name.utf8.prefix(Int(UInt16.max)))
        out.bytes.append(contentsOf: value.utf8)
        return RecordExtension(tag: userMetadataTag, mustUnderstand: false, value: out.bytes)
    }

    /// A chunk address field.
    public static func chunkAddress(_ address: ChunkAddress) -> RecordExtension {
        var out = ByteWriter(capacity: 20)
        out.u64(address.upload.high); out.u64(address.upload.low); out.u32(address.index)
        return RecordExtension(tag: chunkAddressTag, mustUnderstand: true, value: out.bytes)
    }

    /// The user metadata entries among `extensions`.
    public static func userMetadata(in extensions: [RecordExtension]) -> [(name: String, value: String)] {
        extensions.compactMap { ext in
            guard ext.tag == userMetadataTag, ext.value.count >= 2 else { return nil }
            let n = Int(ext.value[0]) | Int(ext.value[1]) << 8
            guard 2 + n <= ext.value.count else { return nil }
            return (String(decoding: ext.value[2..<(2 + n)], as: UTF8.self),
                    String(decoding: ext.value[(2 + n)...], as: UTF8.self))
        }
    }

    /// The chunk address among `extensions`, if any.
    public static func chunkAddress(in extensions: [RecordExtension]) -> ChunkAddress? {
        guard let ext = extensions.first(where: { $0.tag == chunkAddressTag }), ext.value.count == 20 else { return nil }
        var r = ByteReader(ext.value)
        return ChunkAddress(upload: RequestID(high: r.u64(), low: r.u64()), index: r.u32())
    }
}
