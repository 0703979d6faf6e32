import CatenaCore
import CatenaWire
import NIOCore
import Testing

private typealias F = MessageFixtures

@Suite("Message payloads")
struct MessagesTests {

    // MARK: Every payload, generically

    /// Two types sharing a number would be taken for each other (a set of types merges them,
    /// a switch takes the first): every type has its own number and prints its own name.
    @Test("Every frame type has a number and a name of its own")
    func frameTypesAreDistinct() {
        let named: [(FrameType, String)] = [
            (.hello, "hello"), (.welcome, "welcome"), (.error, "error"), (.ping, "ping"), (.pong, "pong"),
            (.write, "write"), (.writeResult, "writeResult"), (.get, "get"), (.objectInfo, "objectInfo"),
            (.objectData, "objectData"), (.head, "head"), (.list, "list"), (.listPage, "listPage"), (.getRange, "getRange"), (.copy, "copy"),
            (.listUploads, "listUploads"), (.uploadPage, "uploadPage"), (.listParts, "listParts"), (.partPage, "partPage"),
            (.scrub, "scrub"), (.scrubPage, "scrubPage"),
            (.catchUpRequest, "catchUpRequest"), (.catchUpChunk, "catchUpChunk"), (.replicate, "replicate"),
            (.acknowledge, "acknowledge"), (.position, "position"), (.readTarget, "readTarget"),
            (.getConfiguration, "getConfiguration"), (.configuration, "configuration"), (.heartbeat, "heartbeat"),
            (.addNode, "addNode"), (.removeNode, "removeNode"), (.getStatus, "getStatus"), (.chainStatus, "chainStatus"),
            (.getNodeStatus, "getNodeStatus"), (.nodeStatus, "nodeStatus"),
        ]
        #expect(Set(named.map(\.0.rawValue)).count == named.count, "two frame types share a number")
        for (type, name) in named { #expect(type.description == name, "type \(type.rawValue)") }
    }

    @Test("Every sample re-encodes byte for byte after decoding", arguments: MessageFixtures.codecs)
    func canonicalSamples(_ codec: PayloadCodec) throws {
        #expect(!codec.samples.isEmpty)
        for sample in codec.samples {
            #expect(try codec.canonical(sample) == sample)
        }
    }

    @Test("Every strict prefix of every sample is refused with malformed, but for whole payloads of an older layout",
          arguments: MessageFixtures.codecs)
    func everyStrictPrefixIsMalformed(_ codec: PayloadCodec) {
        var checked = 0
        var wrong: [String] = []
        for (i, sample) in codec.samples.enumerated() {
            for n in 0..<sample.readableBytes {
                checked += 1
                let older = codec.olderLayouts[i].contains(n)
                let code = F.code { try codec.canonical(sample.getSlice(at: sample.readerIndex, length: n)!) }
                if older ? code != nil : code != .malformed {
                    wrong.append("sample \(i), \(n) of \(sample.readableBytes) bytes\(older ? " (an older layout)" : ""): \(code.map(String.init(describing:)) ?? "accepted")")
                }
            }
        }
        #expect(checked == codec.samples.reduce(0) { $0 + $1.readableBytes })
        #expect(wrong.isEmpty, "\(wrong.count) prefixes not refused as malformed, e.g. \(wrong.prefix(5))")
    }

    @Test("Bytes after the known fields are ignored (later versions append fields)", arguments: MessageFixtures.codecs)
    func trailingBytesIgnored(_ codec: PayloadCodec) throws {
        var rng = SplitMix64(seed: 0x7A11)
        for sample in codec.samples {
            for tail in [[0x00], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], F.random(100, &rng)] as [[UInt8]] {
                var extended = sample
                extended.writeBytes(tail)
                #expect(try codec.canonical(extended) == sample)
            }
        }
    }

    // MARK: Write

    @Test("Write round trip: put, delete, chunk, manifest, unusual keys and fields", arguments: MessageFixtures.writes)
    func writeRoundTrip(_ request: WriteRequest) throws {
        let payload = WritePayload.encode(request)
        let decoded = try WritePayload.decode(payload)
        #expect(decoded == request)
        #expect(decoded.type == request.type)
        #expect(decoded.key.bytes == request.key.bytes)
        #expect(decoded.requestID == request.requestID)
        #expect(decoded.contentChecksum == request.contentChecksum)
        #expect(decoded.extensions == request.extensions, "extensions kept, in order")
        #expect(decoded.value == request.value)
        #expect(WritePayload.encode(decoded) == payload)
    }

    @Test("Write layout: type, key, request id, content checksum, extensions, value")
    func writeLayout() {
        let request = WriteRequest(requestID: F.requestID, type: .put, key: F.key("k1"), value: [0xAA, 0xBB],
                                   contentChecksum: 0x0A0B_0C0D_0E0F_1011, extensions: [F.contentType("t")])
        var expected: [UInt8] = [1] + F.le(UInt16(2)) + Array("k1".utf8)
        expected += F.le(F.requestID.high) + F.le(F.requestID.low) + F.le(UInt64(0x0A0B_0C0D_0E0F_1011))
        expected += F.le(UInt32(9)) + [1, 0, 0, 0, 1, 0, 0, 0, UInt8(ascii: "t")]
        expected += F.le(UInt32(2)) + [0xAA, 0xBB]
        #expect(F.bytes(WritePayload.encode(request)) == expected)
    }

    @Test("A put carries its content type and user metadata")
    func putContentTypeAndMetadata() throws {
        let decoded = try WritePayload.decode(WritePayload.encode(F.put))
        let record = Record(type: decoded.type, key: decoded.key, lsn: .zero, extensions: decoded.extensions, value: decoded.value)
        #expect(record.contentType == "image/jpeg")
        let metadata = RecordExtension.userMetadata(in: decoded.extensions)
        #expect(metadata.map(\.name) == ["owner", "caption"])
        #expect(metadata.map { Array($0.value.utf8) } == [Array("ada".utf8), Array("le chat 🐈 \(F.nfd)".utf8)],
                "metadata bytes kept, NFD not normalized")
        #expect(decoded.contentChecksum == XXH3.hash(F.put.value))
    }

    @Test("A chunk carries its chunk address (a known must-understand field)")
    func chunkAddress() throws {
        let decoded = try WritePayload.decode(WritePayload.encode(F.chunk))
        #expect(decoded.type == .chunk)
        #expect(RecordExtension.chunkAddress(in: decoded.extensions) == F.chunkAddress)
        #expect(decoded.extensions.first?.mustUnderstand == true)
        #expect(decoded.value == F.pattern(300))
    }

    @Test("A manifest carries its body; a delete carries no value and checksum 0")
    func manifestAndDelete() throws {
        let manifest = try WritePayload.decode(WritePayload.encode(F.manifestWrite))
        #expect(manifest.type == .manifest)
        #expect(try Manifest(decoding: manifest.value) == F.manifest)
        #expect(manifest.contentChecksum == 0xFEED_FACE_CAFE_BEEF)

        let delete = try WritePayload.decode(WritePayload.encode(F.delete))
        #expect(delete.type == .delete)
        #expect(delete.value.isEmpty)
        #expect(delete.contentChecksum == 0)
        #expect(delete.key == F.key("photos/old.jpg"))
    }

    @Test("A condition travels as the last extension field, must-understand, and leaves the record's fields")
    func writeCondition() throws {
        let payload = WritePayload.encode(F.createOnlyPut)
        let unconditional = WritePayload.encode(WriteRequest(requestID: F.createOnlyPut.requestID, type: .put, key: F.createOnlyPut.key,
                                                             value: F.createOnlyPut.value, extensions: F.createOnlyPut.extensions))
        // type, key, id, checksum; then the extension area grows by the condition's field (tag,
        // flags, length, kind 1).
        #expect(payload.readableBytes == unconditional.readableBytes + 9)
        let decoded = try WritePayload.decode(payload)
        #expect(decoded.condition == .absent)
        #expect(decoded.extensions == F.createOnlyPut.extensions, "the condition is not among the record's fields")
        // A build that does not know conditions refuses the write rather than writing it
        // unconditionally: the field is must-understand, with a tag it does not know.
        #expect(WriteCondition.absent.encodedExtension.mustUnderstand)
        #expect(!RecordExtension.knownTags.contains(WriteCondition.extensionTag))
        // Two conditions are refused.
        var twice = F.createOnlyPut
        twice.extensions.append(WriteCondition.version(LSN(epoch: 1, seq: 1)).encodedExtension)
        #expect(F.code { try WritePayload.decode(WritePayload.encode(twice)) } == .malformed)
    }

    @Test("A write of an unknown record type is refused with unknownRecordType", arguments: [UInt8(0), 9, 10, 63, 64, 255])
    func writeUnknownRecordType(_ type: UInt8) {
        var bytes = F.bytes(WritePayload.encode(F.put))
        bytes[0] = type
        #expect(F.code { try WritePayload.decode(ByteBuffer(bytes: bytes)) } == .unknownRecordType)
        // The type is checked first: even a payload of nothing else says so.
        #expect(F.code { try WritePayload.decode(ByteBuffer(bytes: [type])) } == .unknownRecordType)
    }

    @Test("A write with an unknown must-understand field is refused, wherever the field stands")
    func writeUnknownMustUnderstand() {
        for extensions in [F.put.extensions + [F.unknownMustUnderstand], [F.unknownMustUnderstand] + F.put.extensions,
                           [F.unknownMaySkip, F.unknownMustUnderstand]] {
            var request = F.put
            request.extensions = extensions
            #expect(F.code { try WritePayload.decode(WritePayload.encode(request)) } == .unknownMustUnderstandField)
        }
    }

    @Test("A write keeps unknown may-skip fields byte for byte, in order; known tags may be must-understand")
    func writeUnknownMaySkipKept() throws {
        var request = F.put
        let mustUnderstandType = RecordExtension(tag: RecordExtension.contentTypeTag, mustUnderstand: true, value: Array("a/b".utf8))
        request.extensions = [F.unknownMaySkip, mustUnderstandType, F.unknownMaySkipEmpty] + F.put.extensions
        let decoded = try WritePayload.decode(WritePayload.encode(request))
        #expect(decoded.extensions == request.extensions)
        #expect(decoded.extensions[0].value == [0xDE, 0xAD, 0x00, 0xBE, 0xEF])
        #expect(decoded.extensions[1].mustUnderstand)
        #expect(decoded.extensions[2].tag == 0x7F03 && decoded.extensions[2].value.isEmpty)
    }

    @Test("A write whose extension area is damaged is malformed")
    func writeMalformedExtensions() {
        let head: [UInt8] = [1] + F.le(UInt16(1)) + [UInt8(ascii: "k")] + F.le(UInt64(1)) + F.le(UInt64(2)) + F.le(UInt64(3))
        let value = F.le(UInt32(1)) + [7]
        let cases: [[UInt8]] = [
            F.le(UInt32(4)) + [1, 0, 0, 0],                                  // a field header cut short
            F.le(UInt32(11)) + [9, 0, 0, 0] + F.le(UInt32(100)) + [1, 2, 3], // a field overrunning the area
            F.le(UInt32(1000)) + [1, 0, 0, 0, 0, 0, 0, 0],                   // an area overrunning the payload
        ]
        for area in cases {
            #expect(F.code { try WritePayload.decode(ByteBuffer(bytes: head + area + value)) } == .malformed)
        }
        // The same head with a well-formed (empty) area decodes, so the cases above fail for their area.
        #expect(F.code { try WritePayload.decode(ByteBuffer(bytes: head + F.le(UInt32(0)) + value)) } == nil)
    }

    // MARK: Write limits (regression: an overlong metadata value made the tail trap on head, get and list; see WriteLimitsTests)

    /// A metadata field built by hand: a name of any bytes, then the value.
    static func rawMetadata(name: [UInt8], value: [UInt8]) -> RecordExtension {
        RecordExtension(tag: RecordExtension.userMetadataTag, mustUnderstand: false, value: F.le(UInt16(name.count)) + name + value)
    }

    /// Fields the head refuses: over 65535 bytes, over the 8 KiB metadata bound, or not UTF-8
    /// (which the store's reading would have replaced, with U+FFFD, 3 bytes each).
    static let overlongFields: [RecordExtension] = [
        F.contentType(String(repeating: "x", count: 65_536)),
        RecordExtension(tag: RecordExtension.contentTypeTag, mustUnderstand: false, value: Array(repeating: 0xFF, count: 30_000)),
        .userMetadata(name: "note", value: String(repeating: "v", count: 65_536)),
        .userMetadata(name: "note", value: String(repeating: "v", count: 8189)),
        rawMetadata(name: Array("note".utf8), value: Array(repeating: 0xFF, count: 30_000)),
        rawMetadata(name: Array(repeating: 0xFF, count: 30_000), value: Array("v".utf8)),
        rawMetadata(name: Array("note".utf8), value: [0xFF]),
    ]

    /// The object info a store builds for a written object (as `StoreReads.info` does).
    static func storedInfo(_ request: WriteRequest) -> ObjectInfo {
        var metadata: [String: String] = [:]
        for (name, value) in RecordExtension.userMetadata(in: request.extensions) { metadata[name] = value }
        let contentType = request.extensions.first { $0.tag == RecordExtension.contentTypeTag }
            .map { String(decoding: $0.value, as: UTF8.self) }
        return ObjectInfo(key: request.key, lsn: LSN(epoch: 1, seq: 1), size: UInt64(request.value.count),
                          contentChecksum: request.contentChecksum, contentType: contentType, userMetadata: metadata)
    }

    @Test("A write whose content type or metadata breaks the write limits is refused with invalidArgument",
          arguments: overlongFields)
    func writeOverlongField(_ field: RecordExtension) {
        var request = F.put
        request.extensions = [F.contentType("text/plain"), field]
        #expect(F.code { try WritePayload.decode(WritePayload.encode(request)) } == .invalidArgument)
    }

    @Test("A content type of 65535 bytes and 8 KiB of metadata are accepted, and their object info round-trips")
    func writeLongestFields() throws {
        var request = F.put
        request.extensions = [
            F.contentType(String(repeating: "t", count: 65_535)),
            Self.rawMetadata(name: Array(repeating: UInt8(ascii: "n"), count: 4096), value: Array(repeating: UInt8(ascii: "v"), count: 4000)),
            Self.rawMetadata(name: Array("short".utf8), value: Array("é".utf8) + Array(repeating: UInt8(ascii: "w"), count: 89)),
        ]
        let decoded = try WritePayload.decode(WritePayload.encode(request))
        #expect(decoded == request)
        let info = Self.storedInfo(decoded)
        #expect(info.contentType?.utf8.count == 65_535)
        #expect(info.userMetadata[String(repeating: "n", count: 4096)]?.utf8.count == 4000)
        #expect(info.userMetadata["short"]?.utf8.count == 91)
        let described = try ObjectInfoPayload.decode(ObjectInfoPayload.encode(info))
        #expect(described == info)
    }

    // MARK: LSN

    @Test("LSN round trip and layout: epoch then seq, little-endian", arguments: MessageFixtures.lsns)
    func lsnRoundTrip(_ lsn: LSN) throws {
        let payload = LSNPayload.encode(lsn)
        #expect(F.bytes(payload) == F.le(lsn.epoch) + F.le(lsn.seq))
        #expect(try LSNPayload.decode(payload) == lsn)
    }

    @Test("An LSN payload with bytes after it decodes to the same LSN")
    func lsnTrailingBytes() throws {
        let lsn = LSN(epoch: 0x0102_0304_0506_0708, seq: 99)
        for tail in [[0], [1, 2, 3], Array(repeating: 0xFF, count: 16)] as [[UInt8]] {
            var payload = LSNPayload.encode(lsn)
            payload.writeBytes(tail)
            #expect(try LSNPayload.decode(payload) == lsn)
        }
        #expect(F.code { try LSNPayload.decode(ByteBuffer(bytes: Array(repeating: 1, count: 15))) } == .malformed)
    }

    // MARK: Key

    @Test("Key round trip and layout, non-ASCII and 1024-byte keys", arguments: MessageFixtures.keys)
    func keyRoundTrip(_ key: Key) throws {
        let payload = KeyPayload.encode(key)
        #expect(F.bytes(payload) == F.le(UInt16(key.bytes.count)) + key.bytes)
        let decoded = try KeyPayload.decode(payload)
        #expect(decoded == key)
        #expect(decoded.bytes == key.bytes)
    }

    @Test("NFC and NFD spellings of a key stay two different keys on the wire")
    func keysAreBytes() throws {
        #expect(F.nfc == F.nfd, "Swift's String equality is canonical equivalence")
        let nfc = try KeyPayload.decode(KeyPayload.encode(F.key(F.nfc)))
        let nfd = try KeyPayload.decode(KeyPayload.encode(F.key(F.nfd)))
        #expect(nfc != nfd)
        #expect(nfc.bytes == [0x63, 0x61, 0x66, 0xC3, 0xA9])
        #expect(nfd.bytes == [0x63, 0x61, 0x66, 0x65, 0xCC, 0x81])
        #expect(KeyPayload.encode(nfc) != KeyPayload.encode(nfd))

        var write = F.put
        write.key = F.key(F.nfd)
        #expect(try WritePayload.decode(WritePayload.encode(write)).key.bytes == Array(F.nfd.utf8))
        let request = ListRequest(prefix: Array(F.nfd.utf8), after: F.key(F.nfd))
        let decoded = try ListRequest(decoding: request.encoded())
        #expect(decoded.prefix == Array(F.nfd.utf8))
        #expect(decoded.after?.bytes == Array(F.nfd.utf8))
    }

    /// Key fields that are not valid keys: empty, one byte too long, NUL, not UTF-8.
    static let invalidKeyFields: [[UInt8]] = [[], Array(repeating: 0x61, count: Key.maxLength + 1), [0x61, 0x00, 0x62], [0xC3, 0x28], [0xFF]]

    @Test("An invalid key is refused with invalidKey in every payload that carries one", arguments: invalidKeyFields)
    func invalidKeys(_ keyBytes: [UInt8]) {
        let field = F.le(UInt16(keyBytes.count)) + keyBytes
        #expect(F.code { try KeyPayload.decode(ByteBuffer(bytes: field)) } == .invalidKey)

        let writeTail = F.le(UInt64(1)) + F.le(UInt64(2)) + F.le(UInt64(3)) + F.le(UInt32(0)) + F.le(UInt32(0))
        #expect(F.code { try WritePayload.decode(ByteBuffer(bytes: [1] + field + writeTail)) } == .invalidKey)

        let list = F.le(UInt16(0)) + [1] + field + F.le(UInt32(10))
        #expect(F.code { try ListRequest(decoding: ByteBuffer(bytes: list)) } == .invalidKey)

        let page = F.le(UInt32(0)) + [1] + field
        #expect(F.code { try ListPagePayload.decode(ByteBuffer(bytes: page)) } == .invalidKey)

        let info = F.bytes(ObjectInfoPayload.encode(F.bareInfo)).dropFirst(3) // the bare info's key is "a"
        #expect(F.code { try ObjectInfoPayload.decode(ByteBuffer(bytes: field + info)) } == .invalidKey)
        #expect(F.code { try ObjectInfoPayload.decode(ByteBuffer(bytes: F.le(UInt16(1)) + [0x61] + info)) } == nil)
    }

    @Test("A key field longer than its payload is malformed, not invalid")
    func keyFieldOverrun() {
        for claimed in [UInt16(2), 1025, .max] {
            #expect(F.code { try KeyPayload.decode(ByteBuffer(bytes: F.le(claimed) + [0x61])) } == .malformed)
        }
    }

    // MARK: Object info

    @Test("Object info round trip: with and without content type, with metadata", arguments: MessageFixtures.objectInfos)
    func objectInfoRoundTrip(_ info: ObjectInfo) throws {
        let payload = ObjectInfoPayload.encode(info)
        let decoded = try ObjectInfoPayload.decode(payload)
        #expect(decoded == info)
        #expect(decoded.key.bytes == info.key.bytes)
        #expect(decoded.contentType.map { Array($0.utf8) } == info.contentType.map { Array($0.utf8) })
        #expect(decoded.userMetadata.count == info.userMetadata.count)
        for (name, value) in info.userMetadata {
            #expect(decoded.userMetadata[name].map { Array($0.utf8) } == Array(value.utf8), "metadata '\(name)' kept byte for byte")
        }
        #expect(decoded.chunkCount == info.chunkCount)
        #expect(ObjectInfoPayload.encode(decoded) == payload)
    }

    @Test("No content type and an empty content type are different")
    func emptyContentType() throws {
        var info = F.bareInfo
        #expect(try ObjectInfoPayload.decode(ObjectInfoPayload.encode(info)).contentType == nil)
        info.contentType = ""
        #expect(try ObjectInfoPayload.decode(ObjectInfoPayload.encode(info)).contentType == "")
    }

    @Test("Object info layout; metadata in byte order of names, whatever the dictionary's order")
    func objectInfoLayout() {
        // By bytes "e\u{301}" (0x65 …) sorts before "f"; by Swift's String order it sorts after.
        let info = ObjectInfo(key: F.key("k"), lsn: LSN(epoch: 1, seq: 2), size: 3, contentChecksum: 4, contentType: "t",
                              userMetadata: ["f": "1", "e\u{301}": "2"], timestamp: 5, requestID: RequestID(high: 6, low: 7), chunkCount: 8)
        var expected = F.le(UInt16(1)) + [UInt8(ascii: "k")]
        for n in [1, 2, 3, 4, 5, 6, 7] as [UInt64] { expected += F.le(n) }
        expected += F.le(UInt32(8)) + [1] + F.le(UInt16(1)) + [UInt8(ascii: "t")]
        expected += F.le(UInt16(2))
        expected += F.le(UInt16(3)) + [0x65, 0xCC, 0x81] + F.le(UInt16(1)) + [UInt8(ascii: "2")]
        expected += F.le(UInt16(1)) + [UInt8(ascii: "f")] + F.le(UInt16(1)) + [UInt8(ascii: "1")]
        // No parts (not a multipart object).
        expected += F.le(UInt32(0))
        #expect(F.bytes(ObjectInfoPayload.encode(info)) == expected)
    }

    @Test("Object info strings that are not UTF-8 are malformed")
    func objectInfoBadUTF8() {
        var info = F.bareInfo
        info.contentType = "ab"
        var bytes = F.bytes(ObjectInfoPayload.encode(info))
        // Content type bytes are the 2 before the metadata count (the last 2 bytes).
        bytes[bytes.count - 4] = 0xFF
        #expect(F.code { try ObjectInfoPayload.decode(ByteBuffer(bytes: bytes)) } == .malformed)
    }

    // MARK: List

    @Test("List request round trip, with and without after", arguments: MessageFixtures.listRequests)
    func listRequestRoundTrip(_ request: ListRequest) throws {
        let decoded = try ListRequest(decoding: request.encoded())
        #expect(decoded == request)
        #expect(decoded.after?.bytes == request.after?.bytes)
        #expect(decoded.limit == request.limit)
    }

    @Test("Get payload: a key, then the size limit if any; a key alone (the layout before the limit) has none")
    func getPayload() throws {
        let key = F.key("photos/cat.jpg")
        let plain = try GetPayload.decode(GetPayload.encode(key, maxSize: nil))
        #expect(plain.key == key && plain.maxSize == nil)
        #expect(GetPayload.encode(key, maxSize: nil) == KeyPayload.encode(key))
        let bounded = try GetPayload.decode(GetPayload.encode(key, maxSize: 1 << 20))
        #expect(bounded.key == key && bounded.maxSize == 1 << 20)
        // An older node reads the key and ignores the limit.
        #expect(try KeyPayload.decode(GetPayload.encode(key, maxSize: 7)) == key)
        var truncated = GetPayload.encode(key, maxSize: 1 << 20)
        truncated.moveWriterIndex(to: truncated.writerIndex - 3)
        #expect(F.code { try GetPayload.decode(truncated) } == .malformed)
    }

    @Test("List request layout")
    func listRequestLayout() throws {
        let withAfter = ListRequest(prefix: [0x70], after: F.key("k"), limit: 5)
        #expect(F.bytes(withAfter.encoded()) == F.le(UInt16(1)) + [0x70, 1] + F.le(UInt16(1)) + [UInt8(ascii: "k")] + F.le(UInt32(5)) + F.le(UInt16(0)))
        let without = ListRequest(prefix: [], after: nil, limit: 1000)
        #expect(F.bytes(without.encoded()) == F.le(UInt16(0)) + [0] + F.le(UInt32(1000)) + F.le(UInt16(0)))
        let grouped = ListRequest(prefix: [], after: nil, limit: 1000, delimiter: [0x2F])
        #expect(F.bytes(grouped.encoded()) == F.le(UInt16(0)) + [0] + F.le(UInt32(1000)) + F.le(UInt16(1)) + [0x2F])
        // A request of the layout before delimiters: none.
        #expect(try ListRequest(decoding: ByteBuffer(bytes: F.le(UInt16(0)) + [0] + F.le(UInt32(1000)))).delimiter == [])
    }

    @Test("List page round trip: no objects or several, with and without a cursor", arguments: MessageFixtures.listPages)
    func listPageRoundTrip(_ page: ListPage) throws {
        let payload = ListPagePayload.encode(page)
        let decoded = try ListPagePayload.decode(payload)
        #expect(decoded == page)
        #expect(decoded.objects.map(\.key.bytes) == page.objects.map(\.key.bytes))
        #expect(decoded.nextCursor?.bytes == page.nextCursor?.bytes)
        #expect(ListPagePayload.encode(decoded) == payload)
    }

    @Test("An empty last page is ten bytes: no objects, no cursor, not grouped, no common prefixes")
    func emptyPageLayout() throws {
        #expect(F.bytes(ListPagePayload.encode(ListPage(objects: [], nextCursor: nil))) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(F.bytes(ListPagePayload.encode(ListPage(objects: [], nextCursor: nil), grouped: true)) == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        #expect(try ListPagePayload.isGrouped(ListPagePayload.encode(ListPage(objects: [], nextCursor: nil), grouped: true)))
        // A node that knows nothing of delimiters sends the first five bytes only: not grouped.
        #expect(try !ListPagePayload.isGrouped(ByteBuffer(bytes: [0, 0, 0, 0, 0])))
    }

    @Test("A list page claiming more objects than its bytes can hold is refused before allocating",
          arguments: [UInt32.max, 1 << 31, 1 << 24, 12])
    func listPageHugeCount(_ count: UInt32) {
        // Ten minimal objects (66 bytes each) and a cursor flag: 661 bytes, room for at most 11 by the 60-byte bound.
        // Without the bound, reserving UInt32.max object infos would exhaust memory instead of throwing.
        var payload = ByteBuffer(bytes: F.le(count))
        // A page's entries are object infos without the parts field (4 bytes).
        var entry = ObjectInfoPayload.encode(F.bareInfo)
        entry.moveWriterIndex(to: entry.writerIndex - 4)
        for _ in 0..<10 {
            var info = entry
            payload.writeBuffer(&info)
        }
        payload.writeInteger(UInt8(0))
        #expect(entry.readableBytes == 66)
        do {
            _ = try ListPagePayload.decode(payload)
            Issue.record("a page claiming \(count) objects was accepted")
        } catch {
            #expect(error.code == .malformed)
            #expect(error.message.contains("claims"), "refused by the count bound, not by running out of bytes: \(error.message)")
        }
    }

    @Test("A list page of many minimal objects is not refused by the count bound")
    func listPageManyMinimalObjects() throws {
        let page = ListPage(objects: Array(repeating: F.bareInfo, count: 100), nextCursor: nil)
        #expect(try ListPagePayload.decode(ListPagePayload.encode(page)).objects.count == 100)
        // A count one above the objects present passes the bound but runs out of bytes: refused
        // (the cursor flag and grouping fields read as the claimed eleventh object's empty key).
        var bytes = F.bytes(ListPagePayload.encode(ListPage(objects: Array(repeating: F.bareInfo, count: 10), nextCursor: nil)))
        bytes.replaceSubrange(0..<4, with: F.le(UInt32(11)))
        let refusal = F.code { try ListPagePayload.decode(ByteBuffer(bytes: bytes)) }
        #expect(refusal == .malformed || refusal == .invalidKey)
    }

    // MARK: Scrub

    @Test("Scrub request layout")
    func scrubRequestLayout() {
        let request = ScrubRequest(prefix: [0x70], after: F.key("k"), limit: 5, maxBytes: 1 << 20)
        #expect(F.bytes(request.encoded()) == F.le(UInt16(1)) + [0x70] + [1] + F.le(UInt16(1)) + [0x6B] + F.le(UInt32(5)) + F.le(UInt64(1 << 20)))
        #expect(F.bytes(ScrubRequest(limit: 1, maxBytes: 0).encoded()) == F.le(UInt16(0)) + [0] + F.le(UInt32(1)) + F.le(UInt64(0)))
    }

    @Test("Scrub page layout: an entry with a problem, a cursor, the bytes read, damage")
    func scrubPageLayout() {
        let page = ScrubPage(entries: [ScrubEntry(key: F.key("k"), lsn: LSN(epoch: 1, seq: 2), size: 3, contentChecksum: 4, problem: "x")],
                             nextCursor: F.key("k"), bytesRead: 3, damage: ["d"])
        let entry = F.le(UInt16(1)) + [0x6B] + F.le(UInt64(1)) + F.le(UInt64(2)) + F.le(UInt64(3)) + F.le(UInt64(4)) + [1] + F.le(UInt16(1)) + [0x78]
        #expect(F.bytes(ScrubPagePayload.encode(page))
                == F.le(UInt32(1)) + entry + [1] + F.le(UInt16(1)) + [0x6B] + F.le(UInt64(3)) + F.le(UInt16(1)) + F.le(UInt16(1)) + [0x64])
        // An entry without a problem: flag 0 and nothing after it.
        var ok = page
        ok.entries[0].problem = nil
        ok.damage = []
        #expect(F.bytes(ScrubPagePayload.encode(ok)).count == F.bytes(ScrubPagePayload.encode(page)).count - 3 - 3)
    }

    @Test("A scrub entry's problem flag other than 0 or 1 is refused")
    func scrubProblemFlag() {
        var bytes = F.bytes(ScrubPagePayload.encode(ScrubPage(entries: [ScrubEntry(key: F.key("k"), lsn: .zero, size: 0, contentChecksum: 0)],
                                                              nextCursor: nil)))
        // count (4) + key (3) + LSN (16) + size (8) + checksum (8): the flag.
        bytes[39] = 2
        #expect(F.code { try ScrubPagePayload.decode(ByteBuffer(bytes: bytes)) } == .malformed)
    }

    @Test("A scrub page claiming more entries than its bytes can hold is refused before allocating",
          arguments: [UInt32.max, 1 << 24, 30])
    func scrubPageHugeCount(_ count: UInt32) {
        var payload = ScrubPagePayload.encode(ScrubPage(entries: Array(repeating: ScrubEntry(key: F.key("k"), lsn: .zero, size: 0, contentChecksum: 0),
                                                                        count: 20), nextCursor: nil))
        payload.setInteger(count, at: payload.readerIndex, endianness: .little)
        do {
            _ = try ScrubPagePayload.decode(payload)
            Issue.record("a page claiming \(count) entries was accepted")
        } catch {
            #expect(error.code == .malformed)
            #expect(error.message.contains("claims"), "refused by the count bound: \(error.message)")
        }
    }

    @Test("A scrub page is cut to fit a frame, its cursor after its last entry; a long problem is cut on the wire")
    func scrubPageBounded() throws {
        let entries = (0..<100).map { i in
            ScrubEntry(key: F.key("key/\(1000 + i)"), lsn: LSN(epoch: 1, seq: UInt64(i)), size: 1, contentChecksum: 2,
                       problem: i % 2 == 0 ? nil : String(repeating: "p", count: 100))
        }
        let page = ScrubPage(entries: entries, nextCursor: nil, bytesRead: 100, damage: ["one"])
        let bounded = ScrubPagePayload.bounded(page, maxBytes: 4000)
        #expect(bounded.entries.count < 100 && !bounded.entries.isEmpty)
        #expect(bounded.entries == Array(entries.prefix(bounded.entries.count)))
        #expect(bounded.nextCursor == bounded.entries.last?.key)
        #expect(bounded.damage == ["one"] && bounded.bytesRead == 100)
        #expect(ScrubPagePayload.encode(bounded).readableBytes <= 4000)
        // One entry is kept however small the bound.
        #expect(ScrubPagePayload.bounded(page, maxBytes: 1).entries.count == 1)
        #expect(ScrubPagePayload.bounded(page, maxBytes: 1 << 20) == page)
        let long = ScrubPage(entries: [ScrubEntry(key: F.key("k"), lsn: .zero, size: 0, contentChecksum: 0,
                                                  problem: String(repeating: "é", count: ScrubPagePayload.maximumTextBytes))],
                             nextCursor: nil)
        let decoded = try ScrubPagePayload.decode(ScrubPagePayload.encode(long))
        #expect(decoded.entries[0].problem!.utf8.count <= ScrubPagePayload.maximumTextBytes)
        #expect(decoded.entries[0].problem!.hasPrefix("éé"))
    }

    // MARK: Replicate

    @Test("Replicate round trip: records arrive byte for byte as the head encoded them", arguments: MessageFixtures.recordSets)
    func replicateRoundTrip(_ records: [EncodedRecord]) throws {
        let payload = ReplicatePayload.encode(records)
        var expected = F.le(UInt32(records.count))
        for r in records { expected += F.le(UInt32(r.count)) + r.bytes }
        #expect(F.bytes(payload) == expected)
        let decoded = try ReplicatePayload.decode(payload)
        #expect(decoded == records)
        #expect(decoded.map(\.bytes) == records.map(\.bytes))
        #expect(decoded.map { $0.decode() } == records.map { $0.decode() })
    }

    @Test("A replicate payload claiming more records than its bytes can hold is refused before allocating",
          arguments: [UInt32.max, 1 << 31, 1 << 20, 2])
    func replicateHugeCount(_ count: UInt32) {
        let payload = F.le(count) + F.le(UInt32(F.records[1].count)) + F.records[1].bytes
        do {
            _ = try ReplicatePayload.decode(ByteBuffer(bytes: payload))
            Issue.record("a replicate payload claiming \(count) records was accepted")
        } catch {
            #expect(error.code == .malformed)
            #expect(error.message.contains("claims"), "refused by the count bound: \(error.message)")
        }
    }

    @Test("Many minimal records are not refused by the count bound")
    func replicateManyMinimalRecords() throws {
        let records = try (1...40).map { i in
            try Record(type: .delete, key: F.key("k"), lsn: LSN(epoch: 1, seq: UInt64(i))).encoded()
        }
        #expect(records[0].count == RecordHeader.overhead + 1)
        #expect(try ReplicatePayload.decode(ReplicatePayload.encode(records)) == records)
    }

    @Test("Every flipped bit in a replicate payload is refused, or (in the count) yields fewer whole records")
    func replicateBitFlips() throws {
        let records = Array(F.records[0..<3])
        let bytes = F.bytes(ReplicatePayload.encode(records))
        // Where each record starts, after its length prefix.
        var starts: [Int] = []
        var at = 4
        for r in records {
            starts.append(at + 4)
            at += 4 + r.count
        }
        var wrong: [String] = []
        for index in bytes.indices {
            for bit in 0..<8 {
                var mutated = bytes
                mutated[index] ^= 1 << bit
                let outcome: Result<[EncodedRecord], CatenaError> = Result { () throws(CatenaError) in
                    try ReplicatePayload.decode(ByteBuffer(bytes: mutated))
                }
                let fine: Bool
                if index < 4 {
                    // The count: fewer records decode (the frame checksum guards this), more run out of bytes.
                    switch outcome {
                    case .success(let decoded): fine = decoded.count < records.count && decoded == Array(records.prefix(decoded.count))
                    case .failure(let error): fine = error.code == .malformed
                    }
                } else if let k = starts.lastIndex(where: { $0 <= index }), index < starts[k] + records[k].count {
                    switch (outcome, index - starts[k]) {
                    case (.success, _): fine = false
                    case (.failure(let error), 0..<4): fine = error.code == .malformed                              // record magic
                    case (.failure(let error), 8..<10): fine = [.malformed, .checksumMismatch].contains(error.code) // key length
                    case (.failure(let error), _): fine = error.code == .checksumMismatch                           // under a checksum
                    }
                } else {
                    // A record's length prefix.
                    if case .failure(let error) = outcome { fine = error.code == .malformed } else { fine = false }
                }
                if !fine { wrong.append("byte \(index) bit \(bit): \(outcome)") }
            }
        }
        #expect(wrong.isEmpty, "\(wrong.count) flips not refused as expected, e.g. \(wrong.prefix(5))")
    }

    @Test("Replicated records that are intact but not understood are refused with their own codes")
    func replicateRecordsNotUnderstood() throws {
        for record in F.records { #expect(F.resealed(record.bytes) == record.bytes, "resealing changes nothing in a valid record") }
        let first = F.records[0].bytes
        func refusal(_ record: EncodedRecord, _ change: (inout [UInt8]) -> Void) -> CatenaError.Code? {
            var bytes = record.bytes
            change(&bytes)
            return F.code { try ReplicatePayload.decode(F.replicatePayload([first, F.resealed(bytes)])) }
        }
        let delete = F.records[1]
        #expect(refusal(delete) { $0[5] = 9 } == .unknownRecordType)
        #expect(refusal(delete) { $0[4] = 2 } == .unsupportedVersion)
        #expect(refusal(delete) { $0[4] = 0 } == .unsupportedVersion)
        #expect(refusal(delete) { $0[RecordHeader.size + 1] = 0 } == .invalidKey)
        #expect(refusal(delete) { $0[RecordHeader.size + 1] = 0xFF } == .invalidKey)
        // A put turned into a delete still has a value.
        #expect(refusal(F.records[0]) { $0[5] = RecordType.delete.rawValue } == .malformed)
        // The NFD put's first field (unknown, may skip) marked must-understand.
        let unusual = F.records[4]
        let flags = unusual.header.extensionsOffset + 2
        #expect(unusual.extensions.first?.tag == F.unknownMaySkip.tag)
        #expect(refusal(unusual) { $0[flags] = 1 } == .unknownMustUnderstandField)
        // A chunk whose address field became an unknown may-skip field has no address.
        let chunk = F.records[2]
        let tag = chunk.header.extensionsOffset
        #expect(refusal(chunk) { $0.replaceSubrange(tag..<(tag + 4), with: [0x05, 0x7F, 0, 0]) } == .malformed)
        // And the unchanged records pass, so the refusals above come from the changes.
        #expect(refusal(delete) { _ in } == nil)
    }

    @Test("A record length prefix that disagrees with the record is malformed")
    func replicateLengthMismatch() {
        let r = F.records[1].bytes
        for (prefix, body) in [(r.count - 1, Array(r.dropLast())), (r.count + 1, r + [0]), (RecordHeader.size - 1, Array(r.prefix(RecordHeader.size - 1)))] {
            let payload = F.le(UInt32(1)) + F.le(UInt32(prefix)) + body
            #expect(F.code { try ReplicatePayload.decode(ByteBuffer(bytes: payload)) } == .malformed)
        }
    }

    // MARK: Master

    @Test("Configuration round trip: members in chain order", arguments: MessageFixtures.configurations)
    func configurationRoundTrip(_ configuration: ChainConfiguration) throws {
        let payload = ConfigurationPayload.encode(configuration)
        let decoded = try ConfigurationPayload.decode(payload)
        #expect(decoded == configuration)
        #expect(decoded.members.map(\.id.rawValue) == configuration.members.map(\.id.rawValue))
        #expect(decoded.members.map(\.address) == configuration.members.map(\.address))
        #expect(ConfigurationPayload.encode(decoded) == payload)
    }

    @Test("Configuration layout")
    func configurationLayout() {
        var expected = F.le(UInt16(7)) + Array("prod-eu".utf8) + F.le(UInt32(7)) + F.le(UInt64(42)) + F.le(UInt16(1))
        expected += F.le(UInt16(6)) + Array("node-a".utf8) + F.le(UInt16(13)) + Array("10.0.0.1:7000".utf8)
        #expect(F.bytes(ConfigurationPayload.encode(F.configurations[1])) == expected)
    }

    @Test("A configuration with a bad member id or a member listed twice is refused with invalidArgument")
    func configurationInvalidMembers() {
        func payload(_ ids: [String]) -> ByteBuffer {
            var bytes = F.le(UInt16(1)) + [UInt8(ascii: "c")] + F.le(UInt32(1)) + F.le(UInt64(1)) + F.le(UInt16(ids.count))
            for id in ids { bytes += F.le(UInt16(id.utf8.count)) + Array(id.utf8) + F.le(UInt16(1)) + [UInt8(ascii: "x")] }
            return ByteBuffer(bytes: bytes)
        }
        #expect(F.code { try ConfigurationPayload.decode(payload(["a", "b"])) } == nil)
        #expect(F.code { try ConfigurationPayload.decode(payload(["a", "a"])) } == .invalidArgument)
        #expect(F.code { try ConfigurationPayload.decode(payload(["a", ""])) } == .invalidArgument)
        #expect(F.code { try ConfigurationPayload.decode(payload(["node a"])) } == .invalidArgument)
        #expect(F.code { try ConfigurationPayload.decode(payload([String(repeating: "n", count: 65)])) } == .invalidArgument)
    }

    @Test("Heartbeat round trip and layout", arguments: MessageFixtures.heartbeats)
    func heartbeatRoundTrip(_ heartbeat: Heartbeat) throws {
        let payload = heartbeat.encoded()
        let expected = F.le(UInt16(heartbeat.node.rawValue.utf8.count)) + Array(heartbeat.node.rawValue.utf8)
            + F.le(UInt16(heartbeat.address.utf8.count)) + Array(heartbeat.address.utf8)
            + F.le(heartbeat.highestLSN.epoch) + F.le(heartbeat.highestLSN.seq)
            + F.le(heartbeat.epochStart?.epoch ?? 0) + F.le(heartbeat.epochStart?.firstSeq ?? 0)
        var failure: [UInt8] = [0]
        if let f = heartbeat.failure {
            failure = [1] + F.le(UInt16(f.code.description.utf8.count)) + Array(f.code.description.utf8)
                + F.le(UInt16(f.message.utf8.count)) + Array(f.message.utf8)
        }
        #expect(F.bytes(payload) == expected + failure + [heartbeat.leaseless ? 1 : 0] + F.le(heartbeat.sentAt) + F.le(heartbeat.incarnation))
        #expect(try Heartbeat(decoding: payload) == heartbeat)
        // A node older than the flags sends none of the last three fields: no flag set.
        var older = heartbeat
        (older.leaseless, older.sentAt, older.incarnation) = (false, 0, 0)
        #expect(try Heartbeat(decoding: ByteBuffer(bytes: F.bytes(payload).dropLast(17))) == older)
        #expect(try Heartbeat(decoding: payload).failure?.code == heartbeat.failure?.code)
    }

    @Test("A heartbeat of a node older than the failure field reports none; a newer master's reader takes it unchanged")
    func heartbeatWithoutFailureField() throws {
        for heartbeat in F.heartbeats {
            let layout1 = ByteBuffer(bytes: F.bytes(heartbeat.encoded()).prefix(F.heartbeatLayout1Length(heartbeat)))
            var expected = heartbeat
            expected.failure = nil
            (expected.leaseless, expected.sentAt, expected.incarnation) = (false, 0, 0)
            #expect(try Heartbeat(decoding: layout1) == expected)
        }
    }

    @Test("A heartbeat's failure with a flag other than 0 or 1, or an empty code, is malformed")
    func heartbeatFailureRefusals() {
        let healthy = F.heartbeats[0]
        let fixed = F.bytes(healthy.encoded()).prefix(F.heartbeatLayout1Length(healthy))
        for trailer in [[2], [0xFF], [1] + F.le(UInt16(0)) + F.le(UInt16(0)), [1] + F.le(UInt16(3)) + Array("abc".utf8)] as [[UInt8]] {
            #expect(F.code { try Heartbeat(decoding: ByteBuffer(bytes: Array(fixed) + trailer)) } == .malformed, "\(trailer)")
        }
        #expect(F.code { try Heartbeat(decoding: ByteBuffer(bytes: Array(fixed) + [1] + F.le(UInt16(1)) + [0xC3] + F.le(UInt16(0)))) } == .malformed,
                "a code that is not UTF-8")
    }

    @Test("A failure message longer than the limit is cut at a character boundary")
    func heartbeatLongFailureMessage() throws {
        let message = String(repeating: "é", count: Heartbeat.maximumFailureMessageBytes) // 2 bytes each
        let beat = Heartbeat(node: F.node("n1"), address: "h:1", highestLSN: .zero, failure: CatenaError(.ioFailure, message + "x"))
        let decoded = try Heartbeat(decoding: beat.encoded())
        #expect(decoded.failure == CatenaError(.ioFailure, String(repeating: "é", count: Heartbeat.maximumFailureMessageBytes / 2)))
        let odd = String(repeating: "a", count: 1) + message
        let cut = try Heartbeat(decoding: Heartbeat(node: F.node("n1"), address: "h:1", highestLSN: .zero,
                                                    failure: CatenaError(.ioFailure, odd)).encoded())
        #expect(cut.failure?.message.utf8.count == Heartbeat.maximumFailureMessageBytes - 1, "not inside the last é")
    }

    @Test("A heartbeat with bytes after it decodes to the same heartbeat")
    func heartbeatTrailingBytes() throws {
        let heartbeat = F.heartbeats[0]
        for tail in [[0], [0xFF, 0xFE], Array(repeating: 7, count: 40)] as [[UInt8]] {
            var payload = heartbeat.encoded()
            payload.writeBytes(tail)
            let decoded = try Heartbeat(decoding: payload)
            #expect(decoded == heartbeat)
            #expect(decoded.highestLSN == LSN(epoch: 3, seq: 99))
            #expect(decoded.address == "127.0.0.1:7100")
        }
    }

    @Test("A heartbeat from an invalid node id is refused with invalidArgument")
    func heartbeatInvalidNode() {
        for id in ["", "node a", "nœud"] {
            let bytes = F.le(UInt16(id.utf8.count)) + Array(id.utf8) + F.le(UInt16(0)) + F.le(UInt64(1)) + F.le(UInt64(1))
                + F.le(UInt64(0)) + F.le(UInt64(0))
            #expect(F.code { try Heartbeat(decoding: ByteBuffer(bytes: bytes)) } == .invalidArgument)
        }
    }

    @Test("A heartbeat reply is a configuration payload with more after it: clients read it as a configuration",
          arguments: MessageFixtures.heartbeatReplies)
    func heartbeatReplyReadsAsConfiguration(_ reply: HeartbeatReply) throws {
        #expect(try ConfigurationPayload.decode(reply.encoded()) == reply.configuration)
        let decoded = try HeartbeatReply(decoding: reply.encoded())
        #expect(decoded == reply)
        #expect(decoded.history.entries.map(\.firstSeq) == reply.history.entries.map(\.firstSeq), "unknown first seqs stay unknown")
    }

    @Test("A heartbeat reply with an unknown standing, or claiming more epochs than it holds, is malformed")
    func heartbeatReplyRefusals() throws {
        let reply = F.heartbeatReplies[1]
        var bytes = F.bytes(reply.encoded())
        let standingAt = bytes.count - 4 - 4 - 1
        bytes[standingAt] = 9
        #expect(F.code { try HeartbeatReply(decoding: ByteBuffer(bytes: bytes)) } == .malformed)
        bytes[standingAt] = NodeStanding.joining.rawValue
        bytes.replaceSubrange((bytes.count - 4)..., with: F.le(UInt32.max))
        #expect(F.code { try HeartbeatReply(decoding: ByteBuffer(bytes: bytes)) } == .malformed)
    }

    @Test("A chain status with an unknown role or health is malformed")
    func chainStatusRefusals() throws {
        let status = F.statuses[1]
        // Layout 1 (no reasons): the last node's health is the last byte.
        var bytes = Array(F.bytes(status.encoded()).prefix(F.chainStatusLayout1Length(status)))
        bytes[bytes.count - 1] = 0
        #expect(F.code { try ChainStatus(decoding: ByteBuffer(bytes: bytes)) } == .malformed)
        bytes[bytes.count - 1] = ChainStatus.Health.leaving.rawValue
        #expect(try ChainStatus(decoding: ByteBuffer(bytes: bytes)) == status)
        let roleAt = bytes.count - 1 - 8 - 8 - 8 - 16 - 1
        bytes[roleAt] = 5
        #expect(F.code { try ChainStatus(decoding: ByteBuffer(bytes: bytes)) } == .malformed)
    }

    @Test("A chain status carries the chain's reason and each node's after the nodes; one from an older master has none")
    func chainStatusReasons() throws {
        let status = F.statuses[2]
        let bytes = F.bytes(status.encoded())
        let old = F.chainStatusLayout1Length(status)
        let reasons = [status.reason!, status.nodes[0].reason!, ""].flatMap { F.le(UInt16($0.utf8.count)) + Array($0.utf8) }
        #expect(Array(bytes[old...]) == reasons)
        let decoded = try ChainStatus(decoding: status.encoded())
        #expect(decoded.reason == status.reason)
        #expect(decoded.nodes.map(\.reason) == [status.nodes[0].reason, nil])
        var older = status
        older.reason = nil
        for i in older.nodes.indices { older.nodes[i].reason = nil }
        #expect(try ChainStatus(decoding: ByteBuffer(bytes: bytes.prefix(old))) == older)
        // Reasons past the limit are cut.
        var long = status
        long.reason = String(repeating: "x", count: ChainStatus.maximumReasonBytes + 10)
        #expect(try ChainStatus(decoding: long.encoded()).reason?.utf8.count == ChainStatus.maximumReasonBytes)
    }
}

@Suite("List page bound")
struct ListPageBoundTests {
    func page(_ n: Int, metadataBytes: Int) throws -> ListPage {
        let objects = try (0..<n).map { i in
            ObjectInfo(key: try Key("k\(i)"), lsn: LSN(epoch: 1, seq: UInt64(i + 1)), size: 1, contentChecksum: 0,
                       userMetadata: ["m": String(repeating: "x", count: metadataBytes)])
        }
        return ListPage(objects: objects, nextCursor: try Key("next"))
    }

    @Test func aLargePageIsCutWithACursorAfterItsLastObject() throws {
        let full = try page(10, metadataBytes: 1000)
        let cut = ListPagePayload.bounded(full, maxBytes: 4000)
        #expect(cut.objects.count >= 1)
        #expect(cut.objects.count < 10)
        #expect(cut.objects == Array(full.objects.prefix(cut.objects.count)))
        #expect(cut.nextCursor == cut.objects.last?.key)
        #expect(ListPagePayload.encode(cut).readableBytes <= 4000)
    }

    @Test func aSmallPageIsUnchanged() throws {
        let small = try page(3, metadataBytes: 10)
        #expect(ListPagePayload.bounded(small, maxBytes: 1 << 20) == small)
    }

    @Test func oneObjectLargerThanTheBoundStillComesAlone() throws {
        let full = try page(3, metadataBytes: 5000)
        let cut = ListPagePayload.bounded(full, maxBytes: 1000)
        #expect(cut.objects.count == 1)
        #expect(cut.nextCursor == full.objects[0].key)
    }
}
