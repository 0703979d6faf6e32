import CatenaCore
import NIOCore

// The payloads of Catena's request, replication and master frames. Each is a value type with
// `encoded()` and a throwing `init(decoding:)`; decoders refuse truncated or malformed payloads
// with `malformed` and never trust a length they have not checked against what is there.
// Trailing bytes after the fields a version knows are ignored, so later versions can append
// fields to a payload without a protocol version break.

extension FrameType {
    /// Client → head: a write (put, delete, chunk, manifest). Reply: ``writeResult`` or error.
    public static let write = FrameType(rawValue: 16)
    /// Head → client: the committed write's LSN.
    public static let writeResult = FrameType(rawValue: 17)
    /// Client → tail: fetch an object. Reply: ``objectInfo`` (flag `more`), then ``objectData``
    /// frames, the last without `more`; or an error frame (also mid-stream).
    public static let get = FrameType(rawValue: 18)
    /// An object's metadata (reply to ``get`` and ``head``).
    public static let objectInfo = FrameType(rawValue: 19)
    /// A piece of an object's bytes.
    public static let objectData = FrameType(rawValue: 20)
    /// Client → tail: an object's metadata. Reply: ``objectInfo`` or error.
    public static let head = FrameType(rawValue: 21)
    /// Client → tail: one page of a listing. Reply: ``listPage``.
    public static let list = FrameType(rawValue: 22)
    /// A page of a listing.
    public static let listPage = FrameType(rawValue: 23)
    /// Client → tail: some bytes of an object (``RangeRequest``). Reply as to ``get``: the
    /// whole object's ``objectInfo``, then ``objectData`` frames of the range's bytes only.
    public static let getRange = FrameType(rawValue: 26)
    /// Client → head: copy an object to another key inside the cluster (``CopyRequest``): the
    /// head reads it from its own log and writes the copy; its bytes do not travel to the
    /// client. Reply: ``writeResult`` with the copy's LSN, or an error frame.
    public static let copy = FrameType(rawValue: 27)
    /// Client → tail: one page of the open multipart uploads (``ListUploadsRequest``). Reply:
    /// ``uploadPage`` (``UploadPagePayload``).
    public static let listUploads = FrameType(rawValue: 28)
    /// A page of open multipart uploads.
    public static let uploadPage = FrameType(rawValue: 29)
    /// Client → tail: one page of an open upload's parts (``ListPartsRequest``). Reply:
    /// ``partPage`` (``PartPagePayload``), or an error frame (`noSuchUpload`).
    public static let listParts = FrameType(rawValue: 30)
    /// A page of an upload's parts.
    public static let partPage = FrameType(rawValue: 31)

    /// Receiver → source: the records after an LSN (a `CatchUpRequest`, in CatenaCatchUpWire).
    /// Reply: ``catchUpChunk`` frames with flag `more`, then a last, empty one; or an error
    /// frame (also mid-stream).
    public static let catchUpRequest = FrameType(rawValue: 24)
    /// Source → receiver: consecutive records of the source's log (a `CatchUpChunk`).
    public static let catchUpChunk = FrameType(rawValue: 25)

    /// Predecessor → successor: records in LSN order, under the frame's epoch.
    public static let replicate = FrameType(rawValue: 64)
    /// Successor → predecessor: everything through an LSN is durable there and downstream.
    public static let acknowledge = FrameType(rawValue: 65)
    /// Successor → predecessor, first on a replication connection: the last LSN in its log.
    public static let position = FrameType(rawValue: 66)
    /// Predecessor → successor, after the successor's ``position``: the last LSN in the
    /// predecessor's log then. A node appended to the chain answers no reads until its log
    /// reaches it: everything committed before the node joined is at or below it.
    public static let readTarget = FrameType(rawValue: 67)

    /// Client or node → master: the current chain configuration. Reply: ``configuration``.
    public static let getConfiguration = FrameType(rawValue: 128)
    /// Master → anyone: a chain configuration.
    public static let configuration = FrameType(rawValue: 129)
    /// Node → master: liveness, the node's address and highest LSN. Reply: ``configuration``
    /// carrying a ``HeartbeatReply`` (a configuration payload with the node's standing, its
    /// lease and the epoch history appended).
    public static let heartbeat = FrameType(rawValue: 130)
    /// Operator → master: add a node (``NodeRequest`` with an address). Reply: ``chainStatus``.
    public static let addNode = FrameType(rawValue: 131)
    /// Operator → master: remove a node gracefully (``NodeRequest``). Reply: ``chainStatus``.
    public static let removeNode = FrameType(rawValue: 132)
    /// Operator → master: the chain's status. Reply: ``chainStatus``.
    public static let getStatus = FrameType(rawValue: 133)
    /// Master → operator: a ``ChainStatus``.
    public static let chainStatus = FrameType(rawValue: 134)

    /// Frame types a client sends to a storage node.
    public static let clientRequests: Set<FrameType> = [.write, .get, .getRange, .head, .list, .copy, .listUploads, .listParts, .catchUpRequest,
                                                        .scrub, .getNodeStatus]
    /// Frame types a predecessor sends to its successor.
    public static let replicationRequests: Set<FrameType> = [.replicate, .readTarget]
    /// Frame types a master answers.
    public static let masterRequests: Set<FrameType> = [.getConfiguration, .heartbeat, .addNode, .removeNode, .getStatus]
}

/// The payload of a ``FrameType/write`` frame: a ``WriteRequest``.
///
/// Layout: type (u8), key (u16 length + bytes), request id (2 × u64), content checksum (u64),
/// extensions (u32 length + the record extension format), value (u32 length + bytes). A
/// ``WriteRequest/condition`` travels as a must-understand field among the extensions
/// (``WriteCondition/extensionTag``), so a head that does not know conditions refuses the write.
public enum WritePayload {
    /// The payload bytes for `request`.
    public static func encode(_ request: WriteRequest) -> ByteBuffer {
        var b = ByteBuffer()
        let extensions = EncodedRecord.encodeExtensions(request.extensions + (request.condition.map { [$0.encodedExtension] } ?? []))
        b.reserveCapacity(40 + request.key.bytes.count + extensions.count + request.value.count)
        b.writeInteger(request.type.rawValue)
        b.writeKey(request.key)
        b.writeRequestID(request.requestID)
        b.writeInteger(request.contentChecksum, endianness: .little)
        b.writeInteger(UInt32(extensions.count), endianness: .little)
        b.writeBytes(extensions)
        b.writeInteger(UInt32(request.value.count), endianness: .little)
        b.writeBytes(request.value)
        return b
    }

    /// Parses a write payload. Unknown record types and must-understand fields are refused
    /// with their own codes; a content type or user metadata that breaks
    /// ``WriteLimits/checkFields(_:)`` (not UTF-8, metadata over 8 KiB, a content type an
    /// ``ObjectInfoPayload`` could not carry) with `invalidArgument`. Whether the write fits the
    /// chain's frames is the head's check (``WriteLimits/checkFitsFrames(_:maxFrameSize:)``),
    /// since it depends on the frame limit.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> WriteRequest {
        var b = payload
        guard let type = b.readInteger(as: UInt8.self) else { throw CatenaError(.malformed, "write is truncated") }
        let recordType = RecordType(rawValue: type)
        guard RecordType.known.contains(recordType) else {
            throw CatenaError(.unknownRecordType, "write of unknown record type \(type)")
        }
        let key = try b.readKey()
        let id = try b.readRequestID()
        guard let checksum = b.readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "write is truncated")
        }
        let extensionBytes = try b.readLengthPrefixed(what: "write extensions")
        var extensions = try EncodedRecord.parseExtensions(ArraySlice(extensionBytes))
        // The condition is the head's to check, not the record's to keep.
        var condition: WriteCondition?
        if let i = extensions.firstIndex(where: { $0.tag == WriteCondition.extensionTag }) {
            guard extensions[i].mustUnderstand else { throw CatenaError(.malformed, "a write condition must be a must-understand field") }
            condition = try WriteCondition(decoding: extensions[i].value)
            extensions.remove(at: i)
            guard !extensions.contains(where: { $0.tag == WriteCondition.extensionTag }) else {
                throw CatenaError(.malformed, "write carries two conditions")
            }
        }
        if let unknown = extensions.first(where: { $0.mustUnderstand && !RecordExtension.knownTags.contains($0.tag) }) {
            throw CatenaError(.unknownMustUnderstandField, "write carries must-understand field \(unknown.tag), which this build does not know")
        }
        try WriteLimits.checkFields(extensions)
        let value = try b.readLengthPrefixed(what: "write value")
        return WriteRequest(requestID: id, type: recordType, key: key, value: value, contentChecksum: checksum,
                            extensions: extensions, condition: condition)
    }
}

/// The payload of ``FrameType/writeResult``, ``FrameType/acknowledge`` and ``FrameType/position``
/// frames: one LSN (epoch u64, seq u64).
public enum LSNPayload {
    /// The payload bytes for `lsn`.
    public static func encode(_ lsn: LSN) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeLSN(lsn)
        return b
    }

    /// Parses an LSN payload.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> LSN {
        var b = payload
        return try b.readLSN()
    }
}

/// The payload of an ``FrameType/acknowledge`` frame: the LSN acknowledged (everything through
/// it is on the sender and every member after it), then how far the sender and each member
/// after it hold their logs durably — what the head needs to answer a write in a weaker
/// ``AckMode``.
///
/// Layout: LSN (epoch u64, seq u64); count (u8); count LSNs, the sender's first. A node from
/// before acknowledgement modes sends the LSN alone and reads only the LSN (payloads are
/// read up to what a reader knows: later fields are appended).
public enum AcknowledgePayload {
    /// The payload bytes.
    public static func encode(_ lsn: LSN, held: [LSN]) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeLSN(lsn)
        let count = min(held.count, Int(UInt8.max))
        b.writeInteger(UInt8(count))
        for l in held.prefix(count) { b.writeLSN(l) }
        return b
    }

    /// Parses it; `held` is empty if the sender did not say.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> (lsn: LSN, held: [LSN]) {
        var b = payload
        let lsn = try b.readLSN()
        guard let count = b.readInteger(as: UInt8.self) else { return (lsn, []) }
        var held: [LSN] = []
        for _ in 0..<count { held.append(try b.readLSN()) }
        return (lsn, held)
    }
}

/// The payload of a ``FrameType/getRange`` frame: a key and the bytes wanted, `offset` up to
/// `offset + length` (the tail clamps the end to the object's size).
///
/// Layout: key (u16 length + bytes), offset (u64), length (u64).
public struct RangeRequest: Hashable, Sendable {
    public var key: Key
    public var offset: UInt64
    public var length: UInt64

    public init(key: Key, offset: UInt64, length: UInt64) {
        self.key = key
        self.offset = offset
        self.length = length
    }

    /// The range asked for, its end capped at `UInt64.max`.
    public var range: Range<UInt64> {
        let (end, overflow) = offset.addingReportingOverflow(length)
        return offset..<(overflow ? .max : end)
    }

    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeKey(key)
        b.writeInteger(offset, endianness: .little)
        b.writeInteger(length, endianness: .little)
        return b
    }

    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        key = try b.readKey()
        guard let offset = b.readInteger(endianness: .little, as: UInt64.self),
              let length = b.readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "range request is truncated")
        }
        self.offset = offset
        self.length = length
    }
}

/// The payload of a ``FrameType/copy`` frame: copy the newest version of `source` — its bytes,
/// content checksum, content type and metadata — to `destination`, as the write with
/// `requestID` (a retry with the same id gets the original result), if `condition` holds for
/// `destination`.
///
/// Layout: request id (2 × u64), source key and destination key (u16 length + bytes each),
/// condition (u8 length + the value of a ``WriteCondition`` extension field; 0: none).
public struct CopyRequest: Hashable, Sendable {
    public var requestID: RequestID
    public var source: Key
    public var destination: Key
    public var condition: WriteCondition?

    public init(requestID: RequestID, source: Key, destination: Key, condition: WriteCondition? = nil) {
        self.requestID = requestID
        self.source = source
        self.destination = destination
        self.condition = condition
    }

    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeRequestID(requestID)
        b.writeKey(source)
        b.writeKey(destination)
        let condition = self.condition?.encodedExtension.value ?? []
        b.writeInteger(UInt8(condition.count))
        b.writeBytes(condition)
        return b
    }

    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        requestID = try b.readRequestID()
        source = try b.readKey()
        destination = try b.readKey()
        guard let length = b.readInteger(as: UInt8.self), let bytes = b.readBytes(length: Int(length)) else {
            throw CatenaError(.malformed, "copy request is truncated")
        }
        condition = bytes.isEmpty ? nil : try WriteCondition(decoding: bytes)
        if let condition { try WriteCondition.check(condition, on: .put, key: destination) }
    }
}

/// The payload of a ``FrameType/get`` frame: a key (u16 length + bytes), then optionally the
/// most bytes the client takes (u64): a tail that knows the field refuses a larger object with
/// `valueTooLarge` before sending any of it; one that does not ignores it (trailing bytes).
public enum GetPayload {
    /// The payload bytes for `key`, with `maxSize` if given.
    public static func encode(_ key: Key, maxSize: UInt64?) -> ByteBuffer {
        var b = KeyPayload.encode(key)
        if let maxSize { b.writeInteger(maxSize, endianness: .little) }
        return b
    }

    /// Parses a get payload: the key, and the size limit if there is one.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> (key: Key, maxSize: UInt64?) {
        var b = payload
        let key = try b.readKey()
        guard b.readableBytes > 0 else { return (key, nil) }
        guard let maxSize = b.readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "get's size limit is truncated")
        }
        return (key, maxSize)
    }
}

/// The payload of ``FrameType/get`` and ``FrameType/head`` frames: a key (u16 length + bytes).
public enum KeyPayload {
    /// The payload bytes for `key`.
    public static func encode(_ key: Key) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeKey(key)
        return b
    }

    /// Parses a key payload; an invalid key is refused with `invalidKey`.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> Key {
        var b = payload
        return try b.readKey()
    }
}

/// The payload of an ``FrameType/objectInfo`` frame.
///
/// Layout: key, LSN, size (u64), content checksum (u64), timestamp (u64), request id (2 × u64),
/// chunk count (u32), content type (u8 present + u16 length + UTF-8), user metadata (u16 count,
/// then name and value as u16 length + UTF-8 each); then a multipart object's parts (u32 count,
/// 0 for any other object, then size and checksum, u64 each) — which the same info inside a
/// listing page does not carry; a payload without the field (from an older node) has none.
public enum ObjectInfoPayload {
    /// The payload bytes for `info`.
    public static func encode(_ info: ObjectInfo) -> ByteBuffer {
        var b = ByteBuffer()
        write(info, into: &b)
        b.writeInteger(UInt32(info.parts.count), endianness: .little)
        for p in info.parts {
            b.writeInteger(p.size, endianness: .little)
            b.writeInteger(p.checksum, endianness: .little)
        }
        return b
    }

    /// Parses an object-info payload.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> ObjectInfo {
        var b = payload
        var info = try read(&b)
        guard b.readableBytes > 0 else { return info }
        guard let count = b.readInteger(endianness: .little, as: UInt32.self), count <= Manifest.maxParts,
              b.readableBytes >= Int(count) * 16 else {
            throw CatenaError(.malformed, "object info's part list is truncated or too long")
        }
        for _ in 0..<count {
            info.parts.append(PartSummary(size: b.readInteger(endianness: .little)!, checksum: b.readInteger(endianness: .little)!))
        }
        return info
    }

    static func write(_ info: ObjectInfo, into b: inout ByteBuffer) {
        b.writeKey(info.key)
        b.writeLSN(info.lsn)
        b.writeInteger(info.size, endianness: .little)
        b.writeInteger(info.contentChecksum, endianness: .little)
        b.writeInteger(info.timestamp, endianness: .little)
        b.writeRequestID(info.requestID)
        b.writeInteger(UInt32(clamping: info.chunkCount), endianness: .little)
        b.writeObjectFields(contentType: info.contentType, metadata: info.userMetadata)
    }

    static func read(_ b: inout ByteBuffer) throws(CatenaError) -> ObjectInfo {
        let key = try b.readKey()
        let lsn = try b.readLSN()
        guard let size = b.readInteger(endianness: .little, as: UInt64.self),
              let checksum = b.readInteger(endianness: .little, as: UInt64.self),
              let timestamp = b.readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "object info is truncated")
        }
        let id = try b.readRequestID()
        guard let chunks = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "object info is truncated")
        }
        let (contentType, metadata) = try b.readObjectFields(of: "object info")
        return ObjectInfo(key: key, lsn: lsn, size: size, contentChecksum: checksum, contentType: contentType,
                          userMetadata: metadata, timestamp: timestamp, requestID: id, chunkCount: Int(chunks))
    }
}

/// The payload of a ``FrameType/list`` frame.
public struct ListRequest: Hashable, Sendable {
    /// Only keys starting with these bytes.
    public var prefix: [UInt8]
    /// Only keys after this one (the previous page's cursor).
    public var after: Key?
    /// At most this many objects (and common prefixes).
    public var limit: Int
    /// Keys holding these bytes after the prefix are rolled up into common prefixes; empty: none.
    public var delimiter: [UInt8]

    /// Creates a list request.
    public init(prefix: [UInt8] = [], after: Key? = nil, limit: Int = 1000, delimiter: [UInt8] = []) {
        self.prefix = prefix
        self.after = after
        self.limit = limit
        self.delimiter = delimiter
    }

    /// The payload bytes: prefix (u16 length + bytes), after (u8 present + key), limit (u32),
    /// delimiter (u16 length + bytes; a payload that ends before it has none). A node that does
    /// not know delimiters ignores the field; its page then says it was not grouped
    /// (``ListPagePayload``), and the client refuses it.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt16(clamping: prefix.count), endianness: .little)
        b.writeBytes(prefix.prefix(Int(UInt16.max)))
        b.writeOptionalKey(after)
        b.writeInteger(UInt32(clamping: limit), endianness: .little)
        b.writeInteger(UInt16(clamping: delimiter.count), endianness: .little)
        b.writeBytes(delimiter.prefix(Int(UInt16.max)))
        return b
    }

    /// Parses a list payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        guard let n = b.readInteger(endianness: .little, as: UInt16.self), let prefix = b.readBytes(length: Int(n)),
              let hasAfter = b.readInteger(as: UInt8.self) else {
            throw CatenaError(.malformed, "list request is truncated")
        }
        let after = hasAfter == 0 ? nil : try b.readKey()
        guard let limit = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "list request is truncated")
        }
        var delimiter: [UInt8] = []
        if b.readableBytes > 0 {
            guard let n = b.readInteger(endianness: .little, as: UInt16.self), let d = b.readBytes(length: Int(n)) else {
                throw CatenaError(.malformed, "list request's delimiter is truncated")
            }
            delimiter = d
        }
        self.init(prefix: prefix, after: after, limit: Int(limit), delimiter: delimiter)
    }
}

/// The payload of a ``FrameType/listPage`` frame: count (u32), the object infos, next cursor
/// (u8 present + key), then whether the listing was by delimiter (u8) and the common prefixes
/// (u32 count + keys) — read as not grouped and none from a node that sends neither.
/// (u8 present + key).
public enum ListPagePayload {
    /// The payload bytes for `page`; `grouped`: it answers a request with a delimiter.
    public static func encode(_ page: ListPage, grouped: Bool = false) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(page.objects.count), endianness: .little)
        for info in page.objects { ObjectInfoPayload.write(info, into: &b) }
        b.writeOptionalKey(page.nextCursor)
        b.writeInteger(UInt8(grouped ? 1 : 0))
        b.writeInteger(UInt32(page.commonPrefixes.count), endianness: .little)
        for p in page.commonPrefixes { b.writeKey(p) }
        return b
    }

    /// `page` cut so that its payload stays within `maxBytes` (at least one item is kept); a
    /// cut page's cursor points after its last item (object or common prefix), so the client
    /// simply asks for more.
    public static func bounded(_ page: ListPage, maxBytes: Int) -> ListPage {
        var size = 4 + 1 + 2 + Key.maxLength + 1 + 4
        var scratch = ByteBuffer()
        // Objects and common prefixes in key order, as the listing found them.
        var items: [(key: Key, size: Int, object: ObjectInfo?)] = page.objects.map { info in
            scratch.clear()
            ObjectInfoPayload.write(info, into: &scratch)
            return (info.key, scratch.readableBytes, info)
        }
        items += page.commonPrefixes.map { ($0, 2 + $0.bytes.count, nil) }
        items.sort { $0.key < $1.key }
        for (i, item) in items.enumerated() {
            size += item.size
            if size > maxBytes && i > 0 {
                let kept = items[..<i]
                return ListPage(objects: kept.compactMap(\.object), commonPrefixes: kept.filter { $0.object == nil }.map(\.key),
                                nextCursor: items[i - 1].key)
            }
        }
        return page
    }

    /// Parses a list page payload.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> ListPage {
        try decodeGrouped(payload).page
    }

    /// Whether the page answered a listing by delimiter (a node that does not know delimiters
    /// says nothing, which reads as no).
    public static func isGrouped(_ payload: ByteBuffer) throws(CatenaError) -> Bool {
        try decodeGrouped(payload).grouped
    }

    /// Parses a list page payload, and whether it answered a listing by delimiter.
    public static func decodeGrouped(_ payload: ByteBuffer) throws(CatenaError) -> (page: ListPage, grouped: Bool) {
        var b = payload
        guard let count = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "list page is truncated")
        }
        // Every entry takes at least 60 bytes: a count beyond that is a lie, not an allocation.
        guard Int(count) <= b.readableBytes / 60 else {
            throw CatenaError(.malformed, "list page claims \(count) objects in \(b.readableBytes) bytes")
        }
        var objects: [ObjectInfo] = []
        objects.reserveCapacity(Int(count))
        for _ in 0..<count { objects.append(try ObjectInfoPayload.read(&b)) }
        guard let hasNext = b.readInteger(as: UInt8.self) else {
            throw CatenaError(.malformed, "list page is truncated")
        }
        let next = hasNext == 0 ? nil : try b.readKey()
        let (grouped, prefixes) = try readCommonPrefixes(&b)
        return (ListPage(objects: objects, commonPrefixes: prefixes, nextCursor: next), grouped)
    }

    private static func readCommonPrefixes(_ b: inout ByteBuffer) throws(CatenaError) -> (grouped: Bool, prefixes: [Key]) {
        guard b.readableBytes > 0 else { return (false, []) }
        guard let grouped = b.readInteger(as: UInt8.self), let count = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "list page's common prefixes are truncated")
        }
        // Every prefix takes at least 3 bytes: a count beyond that is a lie, not an allocation.
        guard Int(count) <= b.readableBytes / 3 else {
            throw CatenaError(.malformed, "list page claims \(count) common prefixes in \(b.readableBytes) bytes")
        }
        var prefixes: [Key] = []
        for _ in 0..<count { prefixes.append(try b.readKey()) }
        return (grouped != 0, prefixes)
    }
}

/// The payload of a ``FrameType/replicate`` frame: count (u32), then each record as u32 length
/// + its encoded bytes, unchanged from the head.
public enum ReplicatePayload {
    /// The payload bytes `count` records take beyond their own: the count and each one's length.
    public static func overhead(records count: Int) -> Int { 4 + 4 * count }

    /// The payload bytes for `records`.
    public static func encode<Records: Collection<EncodedRecord>>(_ records: Records) -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(4 + records.reduce(0) { $0 + 4 + $1.count })
        b.writeInteger(UInt32(records.count), endianness: .little)
        for r in records {
            b.writeInteger(UInt32(r.count), endianness: .little)
            b.writeBytes(r.bytes)
        }
        return b
    }

    /// Parses and validates every record (header and record checksums).
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> [EncodedRecord] {
        var b = payload
        guard let count = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "replicate frame is truncated")
        }
        guard Int(count) <= b.readableBytes / (4 + RecordHeader.overhead) else {
            throw CatenaError(.malformed, "replicate frame claims \(count) records in \(b.readableBytes) bytes")
        }
        var records: [EncodedRecord] = []
        records.reserveCapacity(Int(count))
        for _ in 0..<count {
            records.append(try EncodedRecord(validating: try b.readLengthPrefixed(what: "replicated record")))
        }
        return records
    }
}

/// The payload of a ``FrameType/configuration`` frame: a ``ChainConfiguration``.
///
/// Layout: cluster id and chain id (u16 length + UTF-8; u32), epoch (u64), member count (u16),
/// then each member's id and address (u16 length + UTF-8 each).
public enum ConfigurationPayload {
    /// The payload bytes for `configuration`.
    public static func encode(_ configuration: ChainConfiguration) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeShortString(configuration.clusterID)
        b.writeInteger(configuration.chainID, endianness: .little)
        b.writeInteger(configuration.epoch, endianness: .little)
        b.writeInteger(UInt16(configuration.members.count), endianness: .little)
        for m in configuration.members {
            b.writeShortString(m.id.rawValue)
            b.writeShortString(m.address)
        }
        return b
    }

    /// Parses a configuration payload (ids checked, members distinct).
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> ChainConfiguration {
        var b = payload
        return try decode(&b)
    }

    /// Parses a configuration from the front of `b`, leaving what follows it.
    static func decode(_ b: inout ByteBuffer) throws(CatenaError) -> ChainConfiguration {
        let cluster = try b.readShortString(what: "cluster id")
        guard let chain = b.readInteger(endianness: .little, as: UInt32.self),
              let epoch = b.readInteger(endianness: .little, as: UInt64.self),
              let count = b.readInteger(endianness: .little, as: UInt16.self) else {
            throw CatenaError(.malformed, "configuration is truncated")
        }
        var members: [ChainMember] = []
        for _ in 0..<count {
            let id = try NodeID(try b.readShortString(what: "member id"))
            members.append(ChainMember(id: id, address: try b.readShortString(what: "member address")))
        }
        return try ChainConfiguration(clusterID: cluster, chainID: chain, epoch: epoch, members: members)
    }
}

/// The payload of a ``FrameType/heartbeat`` frame: a node's id, the address it serves at, the
/// highest LSN in its log, — from the head of an epoch before its first write there — the seq
/// that epoch starts at, and whether the node has failed.
///
/// Layout: node id, address (u16 length + UTF-8 each), highest LSN (2 × u64), then the epoch
/// start: epoch (u64) and first seq (u64), both 0 when there is none; then the failure: a flag
/// (u8: 0 none, 1 failed) and, when failed, the error's code and message (u16 length + UTF-8
/// each; the code is not empty, the message at most ``maximumFailureMessageBytes``); then flags
/// (u8: 1 — the node holds no lease), when the node sent it (u64, node clock, ns) and the node
/// process's random incarnation (u64). A payload that ends after the epoch start (a node older
/// than the failure field) reports no failure; one that ends before the flags, none set.
public struct Heartbeat: Hashable, Sendable {
    /// The longest failure message sent, in UTF-8 bytes; a longer one is cut at a character boundary.
    public static let maximumFailureMessageBytes = 1024

    /// The node.
    public var node: NodeID
    /// `host:port` where it accepts connections (its real address when it listens on port 0).
    public var address: String
    /// The position of its log, the master's measure of lag and of catch-up: the highest
    /// durable LSN from a member of the configuration it runs; from a node that is no member of
    /// it, the last LSN, durable or not (see `NodeStateMachine.positionToReport`).
    public var highestLSN: LSN
    /// The head of the current epoch, before it writes there: the epoch and its first seq.
    public var epochStart: EpochStart?
    /// Why the node can no longer serve in the chain — its log or store failed (an fsync error,
    /// the disk full in the middle of a write, a head that refuses writes) — though it still
    /// runs; nil: healthy. The master grants a node reporting one no lease, removes it from the
    /// chain once its lease has run out, and never appends it while it reports one.
    public var failure: CatenaError?
    /// The node holds no lease as it sends this, and takes none from replies to earlier
    /// heartbeats (`NodeStateMachine.reportLeaseless(sentAt:)`): a member being removed that
    /// says so is taken out of the chain without waiting for its lease to run out.
    public var leaseless: Bool
    /// When the node sent it, by its clock (monotonic within one ``incarnation``).
    public var sentAt: UInt64
    /// The node process's random id.
    public var incarnation: UInt64

    /// Creates a heartbeat.
    public init(node: NodeID, address: String, highestLSN: LSN, epochStart: EpochStart? = nil, failure: CatenaError? = nil, leaseless: Bool = false,
                sentAt: UInt64 = 0, incarnation: UInt64 = 0) {
        self.node = node
        self.address = address
        self.highestLSN = highestLSN
        self.epochStart = epochStart
        self.failure = failure
        self.leaseless = leaseless
        self.sentAt = sentAt
        self.incarnation = incarnation
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeShortString(node.rawValue)
        b.writeShortString(address)
        b.writeLSN(highestLSN)
        b.writeInteger(epochStart?.firstSeq == nil ? 0 : epochStart!.epoch, endianness: .little)
        b.writeInteger(epochStart?.firstSeq ?? 0, endianness: .little)
        if let failure {
            b.writeInteger(UInt8(1))
            b.writeShortString(String(failure.code.description.utf8Prefix(Int(UInt16.max))))
            b.writeShortString(String(failure.message.utf8Prefix(Self.maximumFailureMessageBytes)))
        } else {
            b.writeInteger(UInt8(0))
        }
        b.writeInteger(UInt8(leaseless ? 1 : 0))
        b.writeInteger(sentAt, endianness: .little)
        b.writeInteger(incarnation, endianness: .little)
        return b
    }

    /// Parses a heartbeat payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        let node = try NodeID(try b.readShortString(what: "node id"))
        let address = try b.readShortString(what: "address")
        let highest = try b.readLSN()
        guard let epoch = b.readInteger(endianness: .little, as: UInt64.self),
              let first = b.readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "heartbeat epoch start is truncated")
        }
        let start = first == 0 ? nil : EpochStart(epoch: epoch, firstSeq: first)
        var failure: CatenaError?
        if let flag = b.readInteger(as: UInt8.self) {
            switch flag {
            case 0:
                break
            case 1:
                let code = try b.readShortString(what: "heartbeat failure code")
                guard !code.isEmpty else { throw CatenaError(.malformed, "heartbeat failure has an empty code") }
                failure = CatenaError(.named(code), try b.readShortString(what: "heartbeat failure message"))
            default:
                throw CatenaError(.malformed, "heartbeat failure flag is \(flag), not 0 or 1")
            }
        }
        // Flags, then when and by which process it was sent: together, or not at all (an older
        // node). Flags a newer node may add are ignored.
        var (flags, sentAt, incarnation): (UInt8, UInt64, UInt64) = (0, 0, 0)
        if let f = b.readInteger(as: UInt8.self) {
            guard let s = b.readInteger(endianness: .little, as: UInt64.self), let i = b.readInteger(endianness: .little, as: UInt64.self) else {
                throw CatenaError(.malformed, "heartbeat flags without their send time and incarnation")
            }
            (flags, sentAt, incarnation) = (f, s, i)
        }
        self.init(node: node, address: address, highestLSN: highest, epochStart: start, failure: failure, leaseless: flags & 1 != 0,
                  sentAt: sentAt, incarnation: incarnation)
    }
}

extension String {
    /// The longest prefix of this string of at most `bytes` UTF-8 bytes that ends at a character boundary.
    func utf8Prefix(_ bytes: Int) -> Substring {
        guard utf8.count > bytes else { return self[...] }
        var end = utf8.index(utf8.startIndex, offsetBy: bytes)
        while end > utf8.startIndex && end.samePosition(in: self) == nil { end = utf8.index(before: end) }
        return self[..<end]
    }
}

// The fields every payload is made of; `package`, for CatenaCatchUpWire's payloads too.
extension ByteBuffer {
    package mutating func writeKey(_ key: Key) {
        writeInteger(UInt16(key.bytes.count), endianness: .little)
        writeBytes(key.bytes)
    }

    /// A key or none: a flag (u8: 0 none, 1 present), then the key if present.
    package mutating func writeOptionalKey(_ key: Key?) {
        if let key {
            writeInteger(UInt8(1))
            writeKey(key)
        } else {
            writeInteger(UInt8(0))
        }
    }

    package mutating func readKey() throws(CatenaError) -> Key {
        guard let n = readInteger(endianness: .little, as: UInt16.self), let bytes = readBytes(length: Int(n)) else {
            throw CatenaError(.malformed, "key is truncated")
        }
        return try Key(bytes: bytes)
    }

    package mutating func writeLSN(_ lsn: LSN) {
        writeInteger(lsn.epoch, endianness: .little)
        writeInteger(lsn.seq, endianness: .little)
    }

    package mutating func readLSN() throws(CatenaError) -> LSN {
        guard let epoch = readInteger(endianness: .little, as: UInt64.self),
              let seq = readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "LSN is truncated")
        }
        return LSN(epoch: epoch, seq: seq)
    }

    package mutating func writeRequestID(_ id: RequestID) {
        writeInteger(id.high, endianness: .little)
        writeInteger(id.low, endianness: .little)
    }

    package mutating func readRequestID() throws(CatenaError) -> RequestID {
        guard let high = readInteger(endianness: .little, as: UInt64.self),
              let low = readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "request id is truncated")
        }
        return RequestID(high: high, low: low)
    }

    /// An object's content type (u8 present + u16 length + UTF-8) and user metadata (u16 count,
    /// then name and value as u16 length + UTF-8 each, by the UTF-8 bytes of the names).
    mutating func writeObjectFields(contentType: String?, metadata: [String: String]) {
        if let contentType {
            writeInteger(UInt8(1))
            writeShortString(contentType)
        } else {
            writeInteger(UInt8(0))
        }
        let sorted = metadata.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        writeInteger(UInt16(clamping: sorted.count), endianness: .little)
        for (name, value) in sorted.prefix(Int(UInt16.max)) {
            writeShortString(name)
            writeShortString(value)
        }
    }

    /// What ``writeObjectFields(contentType:metadata:)`` wrote; `what` names the payload in errors.
    mutating func readObjectFields(of what: String) throws(CatenaError) -> (contentType: String?, metadata: [String: String]) {
        guard let hasType = readInteger(as: UInt8.self) else { throw CatenaError(.malformed, "\(what) is truncated") }
        let contentType = hasType == 0 ? nil : try readShortString(what: "content type")
        guard let count = readInteger(endianness: .little, as: UInt16.self) else { throw CatenaError(.malformed, "\(what) is truncated") }
        var metadata: [String: String] = [:]
        for _ in 0..<count {
            let name = try readShortString(what: "metadata name")
            metadata[name] = try readShortString(what: "metadata value")
        }
        return (contentType, metadata)
    }

    package mutating func readLengthPrefixed(what: String) throws(CatenaError) -> [UInt8] {
        guard let n = readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "\(what) is truncated")
        }
        guard Int(n) <= readableBytes, let bytes = readBytes(length: Int(n)) else {
            throw CatenaError(.malformed, "\(what) claims \(n) bytes; \(readableBytes) remain")
        }
        return bytes
    }
}

extension Frame {
    /// An error reply to `request` carrying `error`.
    public static func error(_ error: CatenaError, replyingTo requestID: UInt64 = 0, chainID: ChainID = 0, epoch: UInt64 = 0) -> Frame {
        Frame(type: .error, flags: .reply, chainID: chainID, requestID: requestID, epoch: epoch, payload: ErrorPayload.encode(error))
    }
}
