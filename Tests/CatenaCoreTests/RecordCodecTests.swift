import CatenaCore
import Testing

private func sample(_ seq: UInt64 = 7) throws -> Record {
    var r = Record(type: .put, chainID: 3, key: try Key("dir/obj"), lsn: LSN(epoch: 2, seq: seq),
                   timestamp: 1_700_000_000_000_000_000, requestID: RequestID(high: 1, low: 2), value: Array("hello, chain".utf8))
    r.contentType = "text/plain"
    r.userMetadata = [("owner", "ops"), ("tier", "gold")]
    return r
}

@Suite("Record codec")
struct RecordCodecTests {
    @Test func roundTripKeepsEveryField() throws {
        let record = try sample()
        let encoded = try record.encoded()
        #expect(encoded.count == RecordHeader.overhead + 7 + encoded.header.extensionsLength + 12)
        let decoded = try EncodedRecord(validating: encoded.bytes).decode()
        #expect(decoded == record)
        #expect(decoded.contentType == "text/plain")
        #expect(decoded.userMetadata.map(\.name) == ["owner", "tier"])
        #expect(decoded.contentChecksum == XXH3.hash(Array("hello, chain".utf8)))
        #expect(decoded.chainID == 3)
    }

    @Test func everySingleBitFlipIsDetected() throws {
        let bytes = try sample().encoded().bytes
        for i in 0..<bytes.count {
            for bit in [0, 3, 7] {
                var damaged = bytes
                damaged[i] ^= UInt8(1 << bit)
                #expect(throws: CatenaError.self, "byte \(i) bit \(bit)") { try EncodedRecord(validating: damaged) }
            }
        }
    }

    @Test func truncatedAndExtendedRecordsAreRefused() throws {
        let bytes = try sample().encoded().bytes
        for n in [0, 1, 79, 80, bytes.count - 1] {
            #expect(throws: CatenaError.self) { try EncodedRecord(validating: Array(bytes.prefix(n))) }
        }
        #expect(throws: CatenaError.self) { try EncodedRecord(validating: bytes + [0]) }
    }

    @Test func newerFormatVersionIsRefusedClearly() throws {
        var bytes = try sample().encoded().bytes
        bytes[4] = 2
        // Re-seal the header checksum so only the version is "wrong".
        bytes.withUnsafeMutableBytes { raw in
            let fixed = XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[0..<72]))
            raw.setLE(XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[80..<87]), seed: fixed), at: 72)
        }
        do {
            _ = try EncodedRecord(validating: bytes)
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .unsupportedVersion)
            #expect(error.message.contains("version 2"))
        }
    }

    @Test func typeRules() throws {
        let k = try Key("k")
        #expect { try Record(type: RecordType(rawValue: 77), key: k, lsn: LSN(epoch: 1, seq: 1)).encoded() } throws: {
            ($0 as? CatenaError)?.code == .unknownRecordType
        }
        #expect { try Record(type: .delete, key: k, lsn: LSN(epoch: 1, seq: 1), value: [1]).encoded() } throws: {
            ($0 as? CatenaError)?.code == .malformed
        }
        // A fence names the request it settles and carries nothing.
        #expect { try Record(type: .fence, key: k, lsn: LSN(epoch: 1, seq: 1), requestID: RequestID(high: 1, low: 1), value: [1]).encoded() } throws: {
            ($0 as? CatenaError)?.code == .malformed
        }
        #expect { try Record(type: .fence, key: k, lsn: LSN(epoch: 1, seq: 1)).encoded() } throws: {
            ($0 as? CatenaError)?.code == .malformed
        }
        _ = try Record(type: .fence, key: k, lsn: LSN(epoch: 1, seq: 1), requestID: RequestID(high: 1, low: 1)).encoded()
        #expect { try Record(type: .chunk, key: k, lsn: LSN(epoch: 1, seq: 1), value: [1]).encoded() } throws: {
            ($0 as? CatenaError)?.code == .malformed
        }
        #expect { try Record(type: .manifest, key: k, lsn: LSN(epoch: 1, seq: 1), value: [1, 2]).encoded() } throws: {
            ($0 as? CatenaError)?.code == .malformed
        }
        var chunk = Record(type: .chunk, key: k, lsn: LSN(epoch: 1, seq: 1), value: [1, 2, 3])
        chunk.chunkAddress = ChunkAddress(upload: RequestID(high: 5, low: 6), index: 9)
        let decoded = try EncodedRecord(validating: chunk.encoded().bytes).decode()
        #expect(decoded.chunkAddress == ChunkAddress(upload: RequestID(high: 5, low: 6), index: 9))
        let manifest = Manifest(upload: RequestID(high: 5, low: 6), chunkCount: 10, totalSize: 1 << 40)
        #expect(try Manifest(decoding: manifest.encoded()) == manifest)
    }

    /// Bytes from a newer writer (valid checksums, a must-understand field this build does not
    /// know) are refused by the reader, not only by the encoder.
    @Test func readerRefusesReceivedUnknownMustUnderstandField() throws {
        var r = try sample()
        r.extensions = [RecordExtension(tag: RecordExtension.contentTypeTag, mustUnderstand: true, value: Array("x/y".utf8))]
        var bytes = try r.encoded().bytes
        // Re-tag the field as 777 (still must-understand) and re-seal the record checksum.
        let extAt = RecordHeader.size + r.key.bytes.count
        bytes[extAt] = UInt8(777 & 0xFF)
        bytes[extAt + 1] = UInt8(777 >> 8)
        bytes.withUnsafeMutableBytes { raw in
            raw.setLE(XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[0..<(raw.count - 8)])), at: raw.count - 8)
        }
        do {
            _ = try EncodedRecord(validating: bytes)
            Issue.record("a record with an unknown must-understand field was accepted")
        } catch {
            #expect(error.code == .unknownMustUnderstandField)
            #expect(error.message.contains("777"))
        }
        // The same field marked may-skip is accepted and kept byte for byte.
        bytes[extAt + 2] = 0
        bytes.withUnsafeMutableBytes { raw in
            raw.setLE(XXH3.hash(UnsafeRawBufferPointer(rebasing: raw[0..<(raw.count - 8)])), at: raw.count - 8)
        }
        let accepted = try EncodedRecord(validating: bytes)
        #expect(accepted.extensions == [RecordExtension(tag: 777, mustUnderstand: false, value: Array("x/y".utf8))])
    }

    @Test func mustUnderstandRulesForExtensions() throws {
        var r = try sample()
        r.extensions.append(RecordExtension(tag: 4242, mustUnderstand: false, value: [9, 9]))
        let kept = try EncodedRecord(validating: r.encoded().bytes)
        #expect(kept.extensions.last == RecordExtension(tag: 4242, mustUnderstand: false, value: [9, 9]))
        r.extensions.append(RecordExtension(tag: 4243, mustUnderstand: true, value: []))
        do {
            _ = try r.encoded()
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .unknownMustUnderstandField)
            #expect(error.message.contains("4243"))
        }
    }
}

@Suite("Keys and LSNs")
struct KeyTests {
    @Test func byteWiseOrderAndEquality() throws {
        let nfc = try Key("caf\u{E9}"), nfd = try Key("cafe\u{301}")
        #expect(nfc != nfd)
        #expect(Set([nfc, nfd]).count == 2)
        #expect(try Key("a") < Key("b"))
        #expect(try Key("a") < Key("aa"))
        #expect(try Key("Z") < Key("a"))
        // Byte order: "cafe\u{301}" (… 0x65 0xCC 0x81) sorts before "caf\u{E9}" (… 0xC3 0xA9),
        // though Swift's String calls them equal.
        #expect(nfd < nfc)
        #expect(try Key("cafz") < nfc)
        #expect(try Key("\u{7F}") < Key("\u{80}"))
        #expect(try Key(bytes: [0x61]).string == "a")
    }

    @Test func limits() {
        #expect(Key.problem(with: []) != nil)
        #expect(Key.problem(with: [UInt8](repeating: 0x41, count: 1024)) == nil)
        #expect(Key.problem(with: [UInt8](repeating: 0x41, count: 1025)) != nil)
        #expect(Key.problem(with: [0x41, 0x00]) != nil)
        #expect(Key.problem(with: [0xC3]) != nil)   // truncated UTF-8
    }

    @Test func lsnOrder() {
        #expect(LSN(epoch: 1, seq: 9) < LSN(epoch: 2, seq: 1))
        #expect(LSN(epoch: 2, seq: 1) < LSN(epoch: 2, seq: 2))
        #expect(LSN.zero < LSN(epoch: 0, seq: 1))
    }

    @Test func xxh3StreamingMatchesOneShot() {
        var rng = SystemRandomNumberGenerator()
        let data = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let hasher = XXH3Hasher()
        var i = 0
        while i < data.count {
            let n = min(Int.random(in: 1...5000, using: &rng), data.count - i)
            hasher.update(data[i..<(i + n)])
            i += n
        }
        #expect(hasher.digest() == XXH3.hash(data))
        #expect(XXH3.hash([UInt8]()) == 0x2D06800538D394C2)   // XXH3-64 of the empty input
    }
}
