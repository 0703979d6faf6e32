import CatenaCatchUpWire
import CatenaCore
import CatenaWire
import NIOCore
import Testing

private typealias F = MessageFixtures

@Suite("Write limits")
struct WriteLimitsTests {
    /// A put of key "k" whose record is exactly `recordLength` bytes: random value bytes fill what
    /// the header, key and `extensions` leave.
    static func put(recordLength: Int, extensions: [RecordExtension] = [], seed: UInt64 = 1) -> WriteRequest {
        let area = WriteLimits.extensionAreaLength(extensions)
        var rng = SplitMix64(seed: seed)
        let value = F.random(recordLength - RecordHeader.overhead - 1 - area, &rng)
        return WriteRequest(requestID: RequestID(high: 1, low: seed), type: .put, key: F.key("k"), value: value, extensions: extensions)
    }

    /// The record `request` becomes, encoded for real.
    static func encoded(_ request: WriteRequest) throws -> EncodedRecord {
        try Record(type: request.type, chainID: 1, key: request.key, lsn: LSN(epoch: 1, seq: 1), requestID: request.requestID,
                   contentChecksum: request.contentChecksum, extensions: request.extensions, value: request.value).encoded()
    }

    @Test("record length and every frame that carries a record alone match real encodings, incompressible data included",
          arguments: [200, 5000, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 9 << 20])
    func sizesMatchEncodings(_ length: Int) throws {
        let request = Self.put(recordLength: length, extensions: [F.contentType("a/b"), .userMetadata(name: "n", value: "v"), F.unknownMaySkip])
        #expect(WriteLimits.recordLength(of: request) == length)
        let record = try Self.encoded(request)
        #expect(record.count == length)
        #expect(WriteLimits.extensionAreaLength(request.extensions) == EncodedRecord.encodeExtensions(request.extensions).count)

        let replicate = Frame(type: .replicate, epoch: 1, payload: ReplicatePayload.encode([record])).encodedSize
        let raw = Frame(type: .catchUpChunk, payload: try CatchUpChunk(records: [record], codec: .raw).encoded()).encodedSize
        let lz4 = Frame(type: .catchUpChunk, payload: try CatchUpChunk(records: [record], codec: .lz4).encoded()).encodedSize
        let largest = WriteLimits.largestFrame(carryingRecordOf: length)
        #expect(replicate <= largest)
        #expect(raw <= largest)
        #expect(lz4 <= largest)
        // The value's random bytes do not compress: at most the header and key gain a little in
        // a small record; in a large one every LZ4 block is stored as it is, the worst case exactly.
        #expect(largest - lz4 < RecordHeader.overhead)
        if length >= 1 << 20 { #expect(lz4 == largest) }
    }

    @Test("the largest record fits every frame exactly at the limit; one byte more does not",
          arguments: [1 << 20, (4 << 20) + 100, (4 << 20) + 141, 17 << 20, (17 << 20) + 3, 64 << 20])
    func boundary(_ maxFrameSize: Int) throws {
        let n = WriteLimits.maxRecordLength(maxFrameSize: maxFrameSize)
        #expect(WriteLimits.largestFrame(carryingRecordOf: n) <= maxFrameSize)
        #expect(WriteLimits.largestFrame(carryingRecordOf: n + 1) > maxFrameSize)
        let fits = Self.put(recordLength: n)
        #expect(F.code { try WriteLimits.checkFitsFrames(fits, maxFrameSize: maxFrameSize) } == nil)
        #expect(F.code { try WriteLimits.check(fits, maxFrameSize: maxFrameSize) } == nil)
        let over = Self.put(recordLength: n + 1)
        #expect(F.code { try WriteLimits.checkFitsFrames(over, maxFrameSize: maxFrameSize) } == .valueTooLarge)
        do {
            try WriteLimits.check(over, maxFrameSize: maxFrameSize)
            Issue.record("a record of \(n + 1) bytes passed a \(maxFrameSize)-byte frame limit")
        } catch {
            #expect(error.code == .valueTooLarge)
            #expect(error.message.contains("\(maxFrameSize)-byte frame limit"), "\(error)")
            #expect(error.message.contains("\(n + 1)-byte record"), "\(error)")
        }
        // The write frame that carries it to the head is smaller than its record: the head gets
        // to see (and refuse) every write that is too large for the chain.
        let writeFrame = Frame(type: .write, payload: WritePayload.encode(over)).encodedSize
        #expect(writeFrame < n + 1)
    }

    @Test("the default frame limit allows records of 17,825,652 bytes; extensions count like the value")
    func defaultLimit() {
        #expect(WriteLimits.maxRecordLength(maxFrameSize: 17 << 20) == 17_825_652)
        let field = RecordExtension(tag: 0x7F10, mustUnderstand: false, value: [UInt8](repeating: 1, count: 1000))
        let n = WriteLimits.maxRecordLength(maxFrameSize: 17 << 20)
        #expect(F.code { try WriteLimits.checkFitsFrames(Self.put(recordLength: n, extensions: [field]), maxFrameSize: 17 << 20) } == nil)
        #expect(F.code { try WriteLimits.checkFitsFrames(Self.put(recordLength: n + 1, extensions: [field]), maxFrameSize: 17 << 20) } == .valueTooLarge)
        // A tiny limit allows nothing.
        #expect(WriteLimits.maxRecordLength(maxFrameSize: Frame.minimumSize) == 0)
    }

    // MARK: Fields

    static func metadata(_ name: [UInt8], _ value: [UInt8]) -> RecordExtension {
        RecordExtension(tag: RecordExtension.userMetadataTag, mustUnderstand: false, value: F.le(UInt16(name.count)) + name + value)
    }

    @Test("user metadata of 8 KiB (names and values, over several entries) is accepted; one byte more is refused")
    func metadataBound() {
        let exactly: [RecordExtension] = [
            .userMetadata(name: "owner", value: String(repeating: "o", count: 4000)),
            .userMetadata(name: "ключ", value: String(repeating: "é", count: 2089) + "x"),  // 8 + 4179 bytes
        ]
        #expect(exactly.reduce(0) { $0 + $1.value.count - 2 } == 8192)
        #expect(F.code { try WriteLimits.checkFields(exactly) } == nil)
        var over = exactly
        over.append(.userMetadata(name: "", value: "x"))
        #expect(F.code { try WriteLimits.checkFields(over) } == .invalidArgument)
        // Content types and other fields do not count.
        #expect(F.code { try WriteLimits.checkFields(exactly + [F.contentType(String(repeating: "t", count: 9000)), F.unknownMaySkip]) } == nil)
        // The same through the write payload decoder.
        var request = F.put
        request.extensions = exactly
        #expect(F.code { try WritePayload.decode(WritePayload.encode(request)) } == nil)
        request.extensions = over
        #expect(F.code { try WritePayload.decode(WritePayload.encode(request)) } == .invalidArgument)
    }

    @Test("metadata names and values must be valid UTF-8, entries well formed; content types valid UTF-8 of at most 65535 bytes")
    func fieldRefusals() {
        let refused: [RecordExtension] = [
            Self.metadata([0xFF], Array("v".utf8)),
            Self.metadata(Array("n".utf8), [0xC3]),                 // a cut two-byte sequence
            Self.metadata(Array("n".utf8), [0xED, 0xA0, 0x80]),     // a UTF-16 surrogate
            RecordExtension(tag: RecordExtension.userMetadataTag, mustUnderstand: false, value: [1]),
            RecordExtension(tag: RecordExtension.userMetadataTag, mustUnderstand: false, value: F.le(UInt16(5)) + [1, 2]),
            RecordExtension(tag: RecordExtension.contentTypeTag, mustUnderstand: false, value: [0xFE]),
            F.contentType(String(repeating: "t", count: 65_536)),
        ]
        for field in refused {
            #expect(F.code { try WriteLimits.checkFields([field]) } == .invalidArgument, "\(field)")
            var request = F.put
            request.extensions = [field]
            #expect(F.code { try WritePayload.decode(WritePayload.encode(request)) } == .invalidArgument, "\(field)")
        }
        let accepted: [RecordExtension] = [
            Self.metadata([], []),
            Self.metadata(Array("caf\u{E9}".utf8), Array("cafe\u{301} 🐈".utf8)),
            F.contentType(String(repeating: "t", count: 65_535)),
        ]
        for field in accepted {
            #expect(F.code { try WriteLimits.checkFields([field]) } == nil, "\(field)")
        }
    }
}
