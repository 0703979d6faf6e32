import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Synchronization
import Testing

@Suite("Store basics")
struct StoreBasicsTests {
    @Test func putGetOverwriteDeleteAndRestart() async throws {
        let f = Fixture()
        let store = try await f.open()
        try await store.append([put("a", bytes("one"), seq: 1, contentType: "text/plain")])
        try await store.append([put("b", bytes("two"), seq: 2), put("a", bytes("three"), seq: 3)])
        #expect(try await store.value("a") == bytes("three"))
        #expect(try await store.value("b") == bytes("two"))
        let info = try #require(try store.head(key("a")))
        #expect(info.size == 5)
        #expect(info.lsn == LSN(epoch: 1, seq: 3))
        #expect(info.contentType == nil)
        #expect(try store.head(key("b"))?.contentChecksum == XXH3.hash(bytes("two")))
        try await store.append([del("b", seq: 4)])
        #expect(try await store.value("b") == nil)
        #expect(try store.head(key("b")) == nil)
        #expect(store.highestLSN == LSN(epoch: 1, seq: 4))
        await store.close()

        let reopened = try await f.open()
        #expect(try await reopened.value("a") == bytes("three"))
        #expect(try await reopened.value("b") == nil)
        #expect(reopened.highestLSN == LSN(epoch: 1, seq: 4))
        await reopened.close()
    }

    @Test func anAppendTicketCallsBackOnceWhenItCompletesAndRefusesACallbackAfterwards() async throws {
        let store = try await Fixture().open()
        let calls = Mutex<[String]>([])
        let first = try store.enqueue([put("a", bytes("one"), seq: 1)])
        let second = try store.enqueue([put("b", bytes("two"), seq: 2)])
        for (name, ticket) in [("first", first), ("second", second)] {
            // Either the callback is kept (and runs once the ticket has its result), or the
            // ticket had completed already.
            let kept = ticket.onCompletion {
                calls.withLock { $0.append("\(name) \(ticket.result.map { (try? $0.get()) != nil } ?? false)") }
            }
            if !kept { calls.withLock { $0.append("\(name) true") } }
        }
        try await second.durable()
        try await first.durable()
        #expect(calls.withLock { $0 }.sorted() == ["first true", "second true"])
        #expect(first.onCompletion { Issue.record("a completed ticket kept a callback") } == false)
        #expect(calls.withLock { $0 }.count == 2)
        await store.close()
    }

    @Test func keysAreByteStrings() async throws {
        let store = try await Fixture().open()
        let nfc = "caf\u{E9}"           // é as one code point
        let nfd = "cafe\u{301}"         // e + combining acute
        #expect(nfc == nfd)             // Swift's String == says they are equal...
        try await store.append([put(nfc, bytes("nfc"), seq: 1), put(nfd, bytes("nfd"), seq: 2)])
        #expect(try await store.value(nfc) == bytes("nfc"))   // ...the store keeps two keys.
        #expect(try await store.value(nfd) == bytes("nfd"))
        #expect(try store.allKeys().count == 2)
        await store.close()
    }

    @Test func invalidKeysAreRefusedWithTypedErrors() {
        for bad in [[UInt8](), [0x61, 0x00, 0x62], [0xFF, 0xFE], [UInt8](repeating: 0x61, count: 1025)] {
            #expect(throws: CatenaError.self) { try Key(bytes: bad) }
            do { _ = try Key(bytes: bad) } catch { #expect(error.code == .invalidKey) }
        }
        #expect((try? Key(bytes: [UInt8](repeating: 0x61, count: 1024))) != nil)
    }

    @Test func listPaginatesInByteOrder() async throws {
        let store = try await Fixture().open()
        var records: [EncodedRecord] = []
        let names = (0..<250).map { "k/\(String(format: "%03d", $0))" } + ["j/x", "l/y", "k"]
        for (i, name) in names.shuffled().enumerated() { records.append(put(name, bytes(name), seq: UInt64(i + 1))) }
        try await store.append(records)
        try await store.append([del("k/100", seq: UInt64(records.count + 1))])
        let keys = try store.allKeys(prefix: "k/", pageSize: 7)
        #expect(keys.count == 249)
        #expect(keys == keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
        #expect(!keys.contains("k/100"))
        let first = try store.list(prefix: Array("k/".utf8), limit: 10)
        #expect(first.objects.count == 10 && first.nextCursor?.string == "k/009")
        #expect(try store.allKeys().count == 252)
        await store.close()
    }

    @Test func appendsMustFollowTheLog() async throws {
        let store = try await Fixture().open()
        try await store.append([put("a", bytes("1"), seq: 1)])
        #expect { try store.enqueue([put("a", bytes("x"), seq: 3)]) } throws: { ($0 as? CatenaError)?.code == .lsnOutOfOrder }
        #expect { try store.enqueue([put("a", bytes("x"), seq: 1)]) } throws: { ($0 as? CatenaError)?.code == .lsnOutOfOrder }
        #expect { try store.enqueue([put("a", bytes("x"), seq: 2, epoch: 0)]) } throws: { ($0 as? CatenaError)?.code == .lsnOutOfOrder }
        try await store.append([put("a", bytes("2"), seq: 2, epoch: 2)])
        #expect(try await store.value("a") == bytes("2"))
        await store.close()
    }

    @Test func oversizedValuesAreRefusedAndNothingBecomesVisible() async throws {
        let store = try await Fixture(configure: { $0.maxValueSize = 1000 }).open()
        #expect { try store.enqueue([put("a", [UInt8](repeating: 1, count: 1001), seq: 1)]) } throws: {
            ($0 as? CatenaError)?.code == .valueTooLarge
        }
        #expect(try store.head(key("a")) == nil)
        try await store.append([put("a", [UInt8](repeating: 1, count: 1000), seq: 1)])
        await store.close()
    }

    @Test func unknownMustUnderstandFieldsAreRefusedAndMaySkipFieldsKept() throws {
        var r = Record(type: .put, key: key("a"), lsn: LSN(epoch: 1, seq: 1), value: bytes("v"))
        r.extensions.append(RecordExtension(tag: 999, mustUnderstand: false, value: [1, 2, 3]))
        let ok = try r.encoded()
        #expect(try EncodedRecord(validating: ok.bytes).extensions.contains { $0.tag == 999 && $0.value == [1, 2, 3] })
        r.extensions.append(RecordExtension(tag: 1000, mustUnderstand: true, value: []))
        #expect { try r.encoded() } throws: { ($0 as? CatenaError)?.code == .unknownMustUnderstandField }
    }

    @Test func directoryLockAndIdentity() async throws {
        let f = Fixture()
        let store = try await f.open()
        await #expect { _ = try await f.open() } throws: { ($0 as? CatenaError)?.code == .directoryLocked }
        await store.close()
        var other = f.configuration
        other.nodeID = "n2"
        await #expect { _ = try await Store.open(other, logger: quietLogger) } throws: { ($0 as? CatenaError)?.code == .identityMismatch }
        let again = try await f.open()
        await again.close()
    }

    @Test func streamsRecordsAfterAnLSN() async throws {
        let store = try await Fixture(configure: { $0.segmentSize = 4096 }).open()
        for seq in 1...200 as ClosedRange<UInt64> {
            try await store.append([put("k\(seq % 17)", [UInt8](repeating: UInt8(seq % 251), count: 100), seq: seq)])
        }
        #expect(store.sealedSegments.count > 3)
        let all = try await store.records(after: .zero).collect()
        #expect(all.map(\.lsn.seq) == Array(1...200))
        let tail = try await store.records(after: LSN(epoch: 1, seq: 150)).collect()
        #expect(tail.map(\.lsn.seq) == Array(151...200))
        var fromSegments: [UInt64] = []
        for seg in store.sealedSegments {
            fromSegments += try await store.records(inSegment: seg.id).collect().map(\.lsn.seq)
        }
        #expect(fromSegments == Array(1...fromSegments.count).map(UInt64.init))
        await store.close()
    }

    @Test func unreadableDirectoriesAndInjectedErrorsAreTyped() async throws {
        // A data directory path that is a regular file (real disk).
        let temp = TempDirectory()
        defer { temp.cleanup() }
        try PosixFileSystem().createDirectory(temp.path)
        let file = temp.path + "/not-a-directory"
        let handle = try PosixFileSystem().open(file, mode: .createNew)
        handle.close()
        var config = StoreConfiguration(directory: file, clusterID: "test", nodeID: "n1")
        config.fileSystem = PosixFileSystem()
        await #expect { _ = try await Store.open(config, logger: quietLogger) } throws: {
            ($0 as? CatenaError)?.code == .directoryUnreadable
        }
        // Segments without an identity file: refuse to guess whose data it is.
        let f = Fixture()
        try f.fs.createDirectory(f.directory)
        try f.fs.open(f.directory + "/00000000000000000001.seg", mode: .createNew).close()
        await #expect { _ = try await f.open() } throws: { ($0 as? CatenaError)?.code == .directoryUnreadable }

        // Permission errors from the file system keep their type, and the store keeps serving.
        let g = Fixture()
        let store = try await g.open()
        try await store.append([put("a", bytes("1"), seq: 1)])
        g.fs.failNextWrites(.permissionDenied)
        await #expect { try await store.append([put("a", bytes("2"), seq: 2)]) } throws: {
            ($0 as? CatenaError)?.code == .permissionDenied
        }
        #expect(try await store.value("a") == bytes("1"))
        try await store.append([put("a", bytes("3"), seq: 2)])
        #expect(try await store.value("a") == bytes("3"))
        await store.close()
    }

    @Test func sealedSegmentsGetHintFilesThatStartUpUses() async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        for seq in 1...100 as ClosedRange<UInt64> {
            try await store.append([put("k\(seq % 9)", [UInt8](repeating: UInt8(seq), count: 200), seq: seq)])
        }
        let sealed = store.sealedSegments
        #expect(sealed.count >= 4)
        await store.close()
        let names = try f.fs.contentsOfDirectory(f.directory)
        for seg in sealed {
            let name = String(repeating: "0", count: 20 - String(seg.id).count) + String(seg.id)
            #expect(names.contains(name + ".hint"))
            // Damage every sealed segment's values: start-up must not read them (it trusts hints),
            // and reads must then catch the damage.
            let path = f.directory + "/" + name + ".seg"
            let size = f.fs.contents(of: path)!.count
            f.fs.corrupt(path: path, at: size - 20, with: [0xFF, 0xFE])
        }
        let reopened = try await f.open()
        #expect(reopened.damage.isEmpty)
        #expect(reopened.highestLSN.seq == 100)
        await reopened.close()
    }
}

@Suite("Listing while writing")
struct ListingWhileWritingTests {
    /// Keys added between listings are found before and after the batch of recent keys is
    /// merged into the sorted array (it merges past 4096 keys), with deletes and re-adds.
    @Test func listingSeesEveryLiveKeyAcrossMerges() async throws {
        let store = try await Fixture().open()
        var rng = SplitMix64(seed: 77)
        var live = Set<String>()
        var seq: UInt64 = 0
        for round in 0..<12 {
            var batch: [EncodedRecord] = []
            for _ in 0..<700 {
                seq += 1
                let name = "p\(Int.random(in: 0..<4, using: &rng))/k\(Int.random(in: 0..<3000, using: &rng))"
                if Int.random(in: 0..<6, using: &rng) == 0 {
                    batch.append(del(name, seq: seq))
                    live.remove(name)
                } else {
                    batch.append(put(name, [UInt8(round)], seq: seq))
                    live.insert(name)
                }
            }
            try await store.append(batch)
            let sorted = { (xs: [String]) in xs.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) } }
            #expect(try store.allKeys(pageSize: 97) == sorted(Array(live)), "round \(round)")
            #expect(try store.allKeys(prefix: "p2/", pageSize: 50) == sorted(live.filter { $0.hasPrefix("p2/") }), "round \(round)")
        }
        await store.close()
    }
}
