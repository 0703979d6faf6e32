import CatenaCore
import Testing

@Suite("Multipart manifests and their checksum")
struct MultipartCoreTests {
    static let parts = [
        ManifestPart(number: 1, group: RequestID(high: 1, low: 1), chunkCount: 2, size: 10, checksum: XXH3.hash(Array(repeating: UInt8(1), count: 10))),
        ManifestPart(number: 4, group: RequestID(high: 1, low: 2), chunkCount: 1, size: 0, checksum: XXH3.hash([UInt8]())),
        ManifestPart(number: 9, group: RequestID(high: 1, low: 3), chunkCount: 3, size: 7, checksum: XXH3.hash(Array(repeating: UInt8(2), count: 7))),
    ]

    @Test func multipartManifestRoundTripsAndAStreamedPutsKeepsItsLayout() throws {
        let manifest = Manifest(upload: RequestID(high: 9, low: 9), parts: Self.parts)
        #expect(manifest.chunkCount == 6 && manifest.totalSize == 17)
        #expect(try Manifest(decoding: manifest.encoded()) == manifest)
        #expect(manifest.groups.map(\.id) == Self.parts.map(\.group))
        let single = Manifest(upload: RequestID(high: 3, low: 4), chunkCount: 5, totalSize: 6)
        #expect(single.encoded().count == Manifest.encodedSize, "a streamed put's manifest is the 28 bytes older nodes read")
        #expect(try Manifest(decoding: single.encoded()) == single)
        #expect(single.groups.map(\.id) == [single.upload])
    }

    @Test func manifestsWhosePartsDoNotAddUpAreMalformed() {
        var bytes = Manifest(upload: .none, parts: Self.parts).encoded()
        bytes[20] ^= 1  // total size
        #expect(F.code { try Manifest(decoding: bytes) } == .malformed)
        let unordered = Manifest(upload: .none, parts: [Self.parts[1], Self.parts[0]])
        #expect(F.code { try Manifest(decoding: unordered.encoded()) } == .malformed)
        let cut = Manifest(upload: .none, parts: Self.parts).encoded().dropLast()
        #expect(F.code { try Manifest(decoding: cut) } == .malformed)
    }

    @Test func theObjectChecksumIsDefinedOverThePartsAndTheRecordMustCarryIt() throws {
        let summaries = Self.parts.map(\.summary)
        let checksum = Manifest.checksum(ofParts: summaries)
        #expect(checksum != Manifest.checksum(ofParts: summaries.reversed()), "order matters")
        #expect(checksum != Manifest.checksum(ofParts: [PartSummary(size: 11, checksum: summaries[0].checksum)] + summaries.dropFirst()), "sizes matter")
        let value = Manifest(upload: RequestID(high: 9, low: 9), parts: Self.parts).encoded()
        let good = try Record(type: .manifest, key: Key("k"), lsn: LSN(epoch: 1, seq: 1), contentChecksum: checksum, value: value).encoded()
        #expect(try EncodedRecord(validating: Array(good.bytes)).type == .manifest)
        #expect(F.code { _ = try Record(type: .manifest, key: Key("k"), lsn: LSN(epoch: 1, seq: 1), contentChecksum: checksum ^ 1, value: value).encoded() } == .malformed)
    }

    @Test func theVerifierChecksEachPartWhereverThePiecesAreCut() {
        let bytes = Array(repeating: UInt8(1), count: 10) + Array(repeating: UInt8(2), count: 7)
        let summaries = Self.parts.map(\.summary)
        let checksum = Manifest.checksum(ofParts: summaries)
        for cut in [1, 3, 10, 17] {
            let verifier = ContentVerifier(contentChecksum: checksum, parts: summaries)
            for start in stride(from: 0, to: bytes.count, by: cut) { verifier.update(Array(bytes[start..<min(start + cut, bytes.count)])) }
            #expect(verifier.finish() == nil, "pieces of \(cut)")
        }
        var corrupt = bytes
        corrupt[12] = 9
        let verifier = ContentVerifier(contentChecksum: checksum, parts: summaries)
        verifier.update(corrupt)
        #expect(verifier.finish()?.contains("part 3 of 3") == true)
        let short = ContentVerifier(contentChecksum: checksum, parts: summaries)
        short.update(Array(bytes.dropLast()))
        #expect(short.finish() != nil)
        let wrongTotal = ContentVerifier(contentChecksum: checksum ^ 1, parts: summaries)
        wrongTotal.update(bytes)
        #expect(wrongTotal.finish() != nil)
        let plain = ContentVerifier(contentChecksum: XXH3.hash(bytes), parts: [])
        plain.update(bytes)
        #expect(plain.finish() == nil)
    }

    @Test func partRecordsCarryTheirPartsChecksumAndANumberInRange() throws {
        let body = PartRecord(upload: RequestID(high: 5, low: 5), part: Self.parts[0])
        #expect(try PartRecord(decoding: body.encoded()) == body)
        var outOfRange = body
        outOfRange.part.number = 10_001
        #expect(F.code { try PartRecord(decoding: outOfRange.encoded()) } == .invalidArgument)
        #expect(F.code { _ = try Record(type: .uploadPart, key: Key("k"), lsn: LSN(epoch: 1, seq: 1), contentChecksum: 1, value: body.encoded()).encoded() } == .malformed)
    }
}

private enum F {
    static func code<T>(_ body: () throws -> T) -> CatenaError.Code? {
        do {
            _ = try body()
            return nil
        } catch {
            return (error as? CatenaError)?.code
        }
    }
}
