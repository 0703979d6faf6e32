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
    /// Opens a multipart upload of `key`; the record's request id is the upload's id, its
    /// content type and metadata the object's. The value is empty.
    public static let uploadCreate = RecordType(rawValue: 6)
    /// Makes a part of a multipart upload: a ``PartRecord`` naming the chunks that hold it.
    public static let uploadPart = RecordType(rawValue: 7)
    /// Ends a multipart upload without an object: the value is the upload's id (16 bytes).
    public static let uploadAbort = RecordType(rawValue: 8)

    /// The kinds this build understands.
    public static let known: Set<RecordType> = [.put, .delete, .chunk, .manifest, .fence, .uploadCreate, .uploadPart, .uploadAbort]

    /// Whether a record of this kind is a version of its key (a put, a manifest, a delete);
    /// chunks and fences are not.
    public var isVersion: Bool { self == .put || self == .manifest || self == .delete }

    /// Whether a record of this kind creates, adds a part to or aborts a multipart upload.
    public var isUploadRecord: Bool { self == .uploadCreate || self == .uploadPart || self == .uploadAbort }

    public var description: String {
        switch self {
        case .put: "put"
        case .delete: "delete"
        case .chunk: "chunk"
        case .manifest: "manifest"
        case .fence: "fence"
        case .uploadCreate: "uploadCreate"
        case .uploadPart: "uploadPart"
        case .uploadAbort: "uploadAbort"
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

/// The body of a manifest record: which chunks become the object.
///
/// A streamed put's manifest names one chunk group, `upload`, whose chunks `0..<chunkCount`
/// hold the object in order (28 bytes: upload id, chunk count, total size). A multipart
/// upload's manifest names its upload and the parts it is made of, in order, each a chunk group
/// of its own (``ManifestPart``); the object's content checksum is then
/// ``Manifest/checksum(ofParts:)``, defined over the parts, not over the bytes.
public struct Manifest: Hashable, Sendable {
    /// The chunk group of a streamed put; the multipart upload of a multipart manifest.
    public var upload: UploadID
    /// How many chunks, in all.
    public var chunkCount: UInt32
    /// The object's total size in bytes (the sum of the chunks' sizes).
    public var totalSize: UInt64
    /// A multipart object's parts, in order; empty for a streamed put's manifest.
    public var parts: [ManifestPart]

    /// Creates a streamed put's manifest: chunks `0..<chunkCount` of the group `upload`.
    public init(upload: UploadID, chunkCount: UInt32, totalSize: UInt64) {
        self.upload = upload
        self.chunkCount = chunkCount
        self.totalSize = totalSize
        self.parts = []
    }

    /// Creates a multipart object's manifest: the parts of `upload`, in order.
    public init(upload: UploadID, parts: [ManifestPart]) {
        self.upload = upload
        self.parts = parts
        self.chunkCount = parts.reduce(0) { $0 &+ $1.chunkCount }
        self.totalSize = parts.reduce(0) { $0 &+ $1.size }
    }

    /// The chunk groups whose chunks make the object, in order, with their chunk counts.
    public var groups: [(id: UploadID, chunkCount: UInt32)] {
        parts.isEmpty ? [(upload, chunkCount)] : parts.map { ($0.group, $0.chunkCount) }
    }

    /// The encoded size of a streamed put's manifest body.
    public static let encodedSize = 28
    /// The most parts a multipart object has (as in S3).
    public static let maxParts = 10_000

    /// The manifest's bytes (a manifest record's value): 28 bytes for a streamed put; for a
    /// multipart object the same 28 followed by the part count (u32) and each part (number u32,
    /// group id 2 × u64, chunk count u32, size u64, checksum u64).
    public func encoded() -> [UInt8] {
        var out = ByteWriter(capacity: Manifest.encodedSize + (parts.isEmpty ? 0 : 4 + parts.count * ManifestPart.encodedSize))
        out.u64(upload.high); out.u64(upload.low); out.u32(chunkCount); out.u64(totalSize)
        if !parts.isEmpty {
            out.u32(UInt32(parts.count))
            for p in parts { p.encode(into: &out) }
        }
        return out.bytes
    }

    /// Parses a manifest record's value, refusing one whose totals do not add up.
    public init<Bytes: Collection<UInt8>>(decoding bytes: Bytes) throws(CatenaError) {
        let array = Array(bytes)
        guard array.count >= Manifest.encodedSize else {
            throw CatenaError(.malformed, "manifest body is \(array.count) bytes, expected at least \(Manifest.encodedSize)")
        }
        var r = ByteReader(array)
        self.upload = RequestID(high: r.u64(), low: r.u64())
        self.chunkCount = r.u32()
        self.totalSize = r.u64()
        self.parts = []
        guard r.remaining > 0 else { return }
        guard r.remaining >= 4 else { throw CatenaError(.malformed, "manifest's part count is truncated") }
        let count = Int(r.u32())
        guard count >= 1, count <= Manifest.maxParts, r.remaining == count * ManifestPart.encodedSize else {
            throw CatenaError(.malformed, "manifest says \(count) parts in \(r.remaining) bytes")
        }
        var parts: [ManifestPart] = []
        parts.reserveCapacity(count)
        for _ in 0..<count { parts.append(ManifestPart(reading: &r)) }
        let chunks = parts.reduce(UInt64(0)) { $0 + UInt64($1.chunkCount) }
        let (size, overflow) = parts.reduce((UInt64(0), false)) { acc, p in
            let (s, o) = acc.0.addingReportingOverflow(p.size)
            return (s, acc.1 || o)
        }
        guard !overflow, chunks == UInt64(chunkCount), size == totalSize else {
            throw CatenaError(.malformed, "manifest's parts hold \(chunks) chunks / \(size) bytes; it says \(chunkCount) / \(totalSize)")
        }
        for (a, b) in zip(parts, parts.dropFirst()) where a.number >= b.number {
            throw CatenaError(.malformed, "manifest's parts are not in ascending order (\(a.number), then \(b.number))")
        }
        self.parts = parts
    }

    /// A multipart object's content checksum: XXH3-64 over each part's size and checksum, both
    /// little-endian u64, in order. (As S3's ETag of a multipart object is the MD5 of the parts'
    /// MD5s, not of the bytes.)
    public static func checksum(ofParts parts: [PartSummary]) -> UInt64 {
        var out = ByteWriter(capacity: parts.count * 16)
        for p in parts { out.u64(p.size); out.u64(p.checksum) }
        return XXH3.hash(out.bytes)
    }
}

/// One part of a multipart object's manifest: which upload part, and the chunk group holding it.
public struct ManifestPart: Hashable, Sendable {
    /// The part's number in its upload (1 ... 10,000).
    public var number: UInt32
    /// The chunk group that holds the part's bytes (chunks `0..<chunkCount`).
    public var group: UploadID
    /// How many chunks.
    public var chunkCount: UInt32
    /// The part's size in bytes.
    public var size: UInt64
    /// XXH3-64 of the part's bytes.
    public var checksum: UInt64

    /// Creates a part.
    public init(number: UInt32, group: UploadID, chunkCount: UInt32, size: UInt64, checksum: UInt64) {
        self.number = number
        self.group = group
        self.chunkCount = chunkCount
        self.size = size
        self.checksum = checksum
    }

    /// The part's size and checksum.
    public var summary: PartSummary { PartSummary(size: size, checksum: checksum) }

    static let encodedSize = 40

    func encode(into out: inout ByteWriter) {
        out.u32(number); out.u64(group.high); out.u64(group.low); out.u32(chunkCount); out.u64(size); out.u64(checksum)
    }

    init(reading r: inout ByteReader) {
        number = r.u32()
        group = RequestID(high: r.u64(), low: r.u64())
        chunkCount = r.u32()
        size = r.u64()
        checksum = r.u64()
    }
}

/// The body of an ``RecordType/uploadPart`` record: part `part.number` of the multipart upload
/// `upload` is the chunk group `part.group`; the record's content checksum is the part's.
public struct PartRecord: Hashable, Sendable {
    /// The multipart upload.
    public var upload: UploadID
    /// The part and its chunks.
    public var part: ManifestPart

    /// Creates a part record body.
    public init(upload: UploadID, part: ManifestPart) {
        self.upload = upload
        self.part = part
    }

    /// The encoded size.
    public static let encodedSize = 16 + ManifestPart.encodedSize

    /// The record's value.
    public func encoded() -> [UInt8] {
        var out = ByteWriter(capacity: PartRecord.encodedSize)
        out.u64(upload.high); out.u64(upload.low)
        part.encode(into: &out)
        return out.bytes
    }

    /// Parses a part record's value.
    public init<Bytes: Collection<UInt8>>(decoding bytes: Bytes) throws(CatenaError) {
        let array = Array(bytes)
        guard array.count == PartRecord.encodedSize else {
            throw CatenaError(.malformed, "part record body is \(array.count) bytes, expected \(PartRecord.encodedSize)")
        }
        var r = ByteReader(array)
        upload = RequestID(high: r.u64(), low: r.u64())
        part = ManifestPart(reading: &r)
        guard (1...UInt32(Manifest.maxParts)).contains(part.number) else {
            throw CatenaError(.invalidArgument, "part number \(part.number) is outside 1...\(Manifest.maxParts)")
        }
    }
}

extension UploadID {
    /// An upload id as a record value (an abort's body): 2 × u64.
    public var encodedValue: [UInt8] {
        var out = ByteWriter(capacity: 16)
        out.u64(high); out.u64(low)
        return out.bytes
    }

    /// Parses an upload id record value.
    public init<Bytes: Collection<UInt8>>(decodingValue bytes: Bytes) throws(CatenaError) {
        let array = Array(bytes)
        guard array.count == 16 else { throw CatenaError(.malformed, "upload id is \(array.count) bytes, expected 16") }
        var r = ByteReader(array)
        self.init(high: r.u64(), low: r.u64())
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
