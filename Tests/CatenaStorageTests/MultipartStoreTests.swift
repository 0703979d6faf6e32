import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

/// Multipart uploads (create, parts, complete, abort) as the store's log records: what the
/// head's strict check refuses, what the listings show, what compaction collects and what a
/// reopen (hint files v2) brings back.
///
/// Every test runs on a ``ManualClock`` and stamps its records with its time, so upload expiry
/// is deterministic; tests that compact turn the request-id window off (`requestWindow = .zero`).
@Suite("Multipart uploads in the store")
struct MultipartStoreTests {
    /// A realistic wall-clock start (2023-11), so the default 7-day timeout is in force.
    static let t0: UInt64 = 1_700_000_000 * 1_000_000_000
    static let second: UInt64 = 1_000_000_000

    // MARK: - Lifecycle

    @Test func lifecycleOutOfOrderPartsReplacementCompletionAndReopen() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.segmentSize = 4096
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 61)
        let upload = UploadID(high: 0xA11C_E000, low: 1)

        try await log.create("movie.mp4", upload, contentType: "video/mp4", metadata: ["owner": "ana", "take": "3"])
        let bytes3 = randomBytes(700, &rng)
        let bytes1 = randomBytes(1300, &rng)
        let bytes2old = randomBytes(1024, &rng)
        let bytes2 = randomBytes(1500, &rng)
        let part3 = try await log.part("movie.mp4", upload, number: 3, group: UploadID(high: 3, low: 1), bytes: bytes3)
        let part1 = try await log.part("movie.mp4", upload, number: 1, group: UploadID(high: 1, low: 1), bytes: bytes1)
        let part2old = try await log.part("movie.mp4", upload, number: 2, group: UploadID(high: 2, low: 1), bytes: bytes2old)
        // Part 2 again, other bytes in a new chunk group: it replaces the first.
        let part2 = try await log.part("movie.mp4", upload, number: 2, group: UploadID(high: 2, low: 2), bytes: bytes2)
        #expect([part3.chunkCount, part1.chunkCount, part2old.chunkCount, part2.chunkCount] == [2, 3, 2, 3])

        let parts = try store.listParts(of: upload)
        #expect(parts.parts.map(\.number) == [1, 2, 3])
        #expect(parts.parts.map(\.manifestPart) == [part1, part2, part3])
        #expect(parts.parts[1].size == 1500 && parts.parts[1].checksum == XXH3.hash(bytes2))
        #expect(parts.parts[1].group == UploadID(high: 2, low: 2))
        #expect(parts.nextPartNumber == nil)
        #expect(parts.upload.partCount == 3)
        // Pages of parts.
        let page = try store.listParts(of: upload, after: 1, limit: 1)
        #expect(page.parts.map(\.number) == [2])
        #expect(page.nextPartNumber == 2)
        #expect(try store.listParts(of: upload, after: 2).parts.map(\.number) == [3])

        let uploads = try store.listUploads()
        #expect(uploads.uploads.count == 1)
        #expect(uploads.nextCursor == nil)
        let info = try #require(uploads.uploads.first)
        #expect(info.key == key("movie.mp4"))
        #expect(info.id == upload)
        #expect(info.created == Self.t0)
        #expect(info.contentType == "video/mp4")
        #expect(info.userMetadata == ["owner": "ana", "take": "3"])
        #expect(info.partCount == 3)
        #expect(try store.listUploads(prefix: Array("movie".utf8)).uploads.map(\.id) == [upload])
        #expect(try store.listUploads(prefix: Array("other".utf8)).uploads.isEmpty)
        // Not visible as an object before completion.
        #expect(try store.head(key("movie.mp4")) == nil)

        // Complete with parts 1 and 2 only; part 3 is left out.
        clock.advance(seconds: 1)
        let complete = log.completeRecord("movie.mp4", upload, parts: [part1, part2], contentType: "video/mp4", metadata: ["owner": "ana", "take": "3"])
        try store.check(complete)
        try await log.append(complete)

        let expected = bytes1 + bytes2
        let summaries = [part1.summary, part2.summary]
        func checkObject(_ store: Store) async throws {
            let head = try #require(try store.head(key("movie.mp4")))
            #expect(head.parts == summaries)
            #expect(head.contentChecksum == Manifest.checksum(ofParts: summaries))
            #expect(head.contentChecksum != XXH3.hash(expected), "a multipart object's checksum is over its parts, not its bytes")
            #expect(head.size == UInt64(expected.count))
            #expect(head.chunkCount == 6)
            #expect(head.contentType == "video/mp4")
            #expect(head.userMetadata == ["owner": "ana", "take": "3"])
            #expect(try await store.value("movie.mp4") == expected)
            #expect(try store.listUploads().uploads.isEmpty)
            #expect { try store.listParts(of: upload) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        }
        try await checkObject(store)
        // The upload is closed: nothing more can be done to it.
        #expect { try store.check(log.partRecord("movie.mp4", upload, part2)) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect { try store.check(log.abortRecord("movie.mp4", upload)) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        try await log.fill(count: 8)
        #expect(store.sealedSegments.count >= 2, "the test means to reopen from sealed segments (hint files)")

        await store.close()
        let reopened = try await f.open()
        try await checkObject(reopened)
        #expect { try reopened.check(log.completeRecord("movie.mp4", upload, parts: [part1, part2])) } throws: {
            ($0 as? CatenaError)?.code == .noSuchUpload
        }
        await reopened.close()
    }

    // MARK: - Refusals

    @Test func strictCheckRefusesWhatTheUploadCannotTake() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.abandonedUploadTimeout = .seconds(60)
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 62)
        func code(_ body: () throws -> Void) -> CatenaError.Code? {
            do { try body(); return nil } catch { return (error as? CatenaError)?.code }
        }

        // Unknown upload: its part's chunks are there, the upload is not.
        let unknown = UploadID(high: 0xDEAD, low: 0xBEEF)
        let strayBytes = randomBytes(900, &rng)
        let stray = ManifestPart.of(number: 1, group: UploadID(high: 90, low: 1), bytes: strayBytes)
        try await log.appendChunks("k", group: stray.group, bytes: strayBytes)
        #expect(code { try store.check(log.partRecord("k", unknown, stray)) } == .noSuchUpload)
        #expect(code { try store.check(log.completeRecord("k", unknown, parts: [stray])) } == .noSuchUpload)
        #expect(code { try store.check(log.abortRecord("k", unknown)) } == .noSuchUpload)
        // Replicas (not strict) and enqueue take a part of an unknown upload, without effect.
        #expect(code { try store.check(log.partRecord("k", unknown, stray), strict: false) } == nil)
        try await log.append(log.partRecord("k", unknown, stray))
        #expect(try store.listUploads().uploads.isEmpty)
        #expect(code { _ = try store.listParts(of: unknown) } == .noSuchUpload)

        // A known upload with part 2 replaced.
        let upload = UploadID(high: 7, low: 7)
        try await log.create("k", upload)
        let p1 = try await log.part("k", upload, number: 1, group: UploadID(high: 1, low: 0), bytes: randomBytes(1100, &rng))
        let p2old = try await log.part("k", upload, number: 2, group: UploadID(high: 2, low: 0), bytes: randomBytes(800, &rng))
        let p2 = try await log.part("k", upload, number: 2, group: UploadID(high: 2, low: 1), bytes: randomBytes(600, &rng))
        #expect(code { try store.check(log.completeRecord("k", upload, parts: [p1, p2])) } == nil)
        // Naming the replaced part 2, or a part never uploaded.
        #expect(code { try store.check(log.completeRecord("k", upload, parts: [p1, p2old])) } == .invalidPart)
        let p5 = ManifestPart(number: 5, group: p2.group, chunkCount: p2.chunkCount, size: p2.size, checksum: p2.checksum)
        #expect(code { try store.check(log.completeRecord("k", upload, parts: [p1, p2, p5])) } == .invalidPart)
        // A part whose checksum is not its bytes' (the manifest part disagrees with the current one).
        var p1wrong = p1
        p1wrong.checksum &+= 1
        #expect(code { try store.check(log.completeRecord("k", upload, parts: [p1wrong, p2])) } == .invalidPart)
        // enqueue is tolerant of unknown uploads and leaves the comparison of parts to the head,
        // but a replaced part's chunks are gone: still refused.
        #expect(code { _ = try store.enqueue([log.completeRecord("k", upload, parts: [p1, p2old], seq: log.seq + 1)]) } == .incompleteUpload)
        // The abort of the upload under another key is not its abort.
        #expect(code { try store.check(log.abortRecord("other", upload)) } == .noSuchUpload)

        // A part whose chunks are not all there, or hold other than it says.
        let shortBytes = randomBytes(1500, &rng)
        let short = ManifestPart.of(number: 3, group: UploadID(high: 3, low: 0), bytes: shortBytes)
        #expect(short.chunkCount == 3)
        try await log.appendChunks("k", group: short.group, bytes: shortBytes, only: [0, 2])
        #expect(code { try store.check(log.partRecord("k", upload, short)) } == .incompleteUpload)
        #expect(code { try store.check(log.partRecord("k", upload, short), strict: false) } == .incompleteUpload)
        let noChunks = ManifestPart.of(number: 3, group: UploadID(high: 3, low: 9), bytes: shortBytes)
        #expect(code { try store.check(log.partRecord("k", upload, noChunks)) } == .incompleteUpload)
        let sizeBytes = randomBytes(1000, &rng)
        var lying = ManifestPart.of(number: 4, group: UploadID(high: 4, low: 0), bytes: sizeBytes)
        try await log.appendChunks("k", group: lying.group, bytes: sizeBytes)
        lying.size += 1
        #expect(code { try store.check(log.partRecord("k", upload, lying)) } == .incompleteUpload)
        // A completion whose part's chunks are not all there (checked with the part, in one batch).
        let batchBytes = randomBytes(1200, &rng)
        let batchPart = ManifestPart.of(number: 6, group: UploadID(high: 6, low: 0), bytes: batchBytes)
        let batchChunks = log.chunkRecords("k", group: batchPart.group, bytes: batchBytes)
        let batchPartRecord = log.partRecord("k", upload, batchPart)
        let batchComplete = log.completeRecord("k", upload, parts: [p1, p2, batchPart])
        #expect(code { try store.check(batchChunks + [batchPartRecord, batchComplete]) } == nil)
        #expect(code { try store.check(Array(batchChunks.dropLast()) + [batchComplete]) } == .invalidPart)
        #expect(code { try store.check([batchPartRecord, batchComplete]) } == .incompleteUpload)

        // A part naming chunks another part holds (a new part always has a new chunk group).
        #expect(code { try store.check(log.partRecord("k", upload, p1)) } == .invalidArgument)

        // Expiry by the head's timestamp: created at t0, timeout 60 s.
        let lateBytes = randomBytes(700, &rng)
        let late = ManifestPart.of(number: 1, group: UploadID(high: 1, low: 1), bytes: lateBytes)
        try await log.appendChunks("k", group: late.group, bytes: lateBytes)
        #expect(code { try store.check(log.partRecord("k", upload, late, at: Self.t0 + 60 * Self.second)) } == nil)
        #expect(code { try store.check(log.partRecord("k", upload, late, at: Self.t0 + 61 * Self.second)) } == .noSuchUpload)
        #expect(code { try store.check(log.completeRecord("k", upload, parts: [p1, p2], at: Self.t0 + 60 * Self.second)) } == nil)
        #expect(code { try store.check(log.completeRecord("k", upload, parts: [p1, p2], at: Self.t0 + 61 * Self.second)) } == .noSuchUpload)
        #expect(code { try store.check(log.abortRecord("k", upload)) } == nil)
        // Refused whatever `strict` says: the upload is known.
        #expect(code { try store.check(log.partRecord("k", upload, late, at: Self.t0 + 61 * Self.second), strict: false) } == .noSuchUpload)

        // Nothing refused changed anything: the upload is still parts 1 and 2, and completes.
        #expect(try store.listParts(of: upload).parts.map(\.manifestPart) == [p1, p2])
        try await store.append([log.completeRecord("k", upload, parts: [p1, p2], seq: log.next())])
        #expect(try store.head(key("k"))?.parts == [p1.summary, p2.summary])
        await store.close()
    }

    // MARK: - Abort

    @Test func abortedUploadIsCollectedWhileACompletedObjectSurvives() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 63)

        // A completed object, one of its parts left out.
        let done = UploadID(high: 0xD0, low: 1)
        try await log.create("done", done)
        let d1bytes = randomBytes(1400, &rng)
        let d2bytes = randomBytes(900, &rng)
        let d1 = try await log.part("done", done, number: 1, group: UploadID(high: 0xD1, low: 0), bytes: d1bytes)
        let d2 = try await log.part("done", done, number: 2, group: UploadID(high: 0xD2, low: 0), bytes: d2bytes)
        let d3 = try await log.part("done", done, number: 3, group: UploadID(high: 0xD3, low: 0), bytes: randomBytes(1000, &rng))
        try await log.append(log.completeRecord("done", done, parts: [d1, d2]))

        // An aborted upload.
        let gone = UploadID(high: 0xA0, low: 1)
        try await log.create("gone", gone)
        let g1 = try await log.part("gone", gone, number: 1, group: UploadID(high: 0xA1, low: 0), bytes: randomBytes(1500, &rng))
        let g2 = try await log.part("gone", gone, number: 2, group: UploadID(high: 0xA2, low: 0), bytes: randomBytes(1200, &rng))
        #expect(try store.listUploads().uploads.map(\.id) == [gone])
        let abort = log.abortRecord("gone", gone)
        try store.check(abort)
        try await log.append(abort)

        #expect(try store.listUploads().uploads.isEmpty)
        #expect { try store.listParts(of: gone) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect { try store.check(log.partRecord("gone", gone, g1)) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect { try store.check(log.completeRecord("gone", gone, parts: [g1, g2])) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect { try store.check(log.abortRecord("gone", gone)) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect(try store.head(key("gone")) == nil)

        // Seal everything above with unrelated puts, commit, compact.
        try await log.fill(count: 12)
        try await store.setCommitWatermark(store.highestLSN)
        let before = try await store.records(after: .zero).collect()
        let droppedGroups: Set<UploadID> = [g1.group, g2.group, d3.group]
        let droppedChunks = before.filter { $0.type == .chunk && droppedGroups.contains(chunkGroup($0)!) }
        #expect(droppedChunks.count == Int(g1.chunkCount + g2.chunkCount + d3.chunkCount))
        let lastCompactable = try #require(store.segments.dropLast().last?.lastLSN)
        #expect(!before.contains { ($0.type.isUploadRecord || $0.type == .chunk) && $0.lsn > lastCompactable },
                "every upload record must sit in a segment compaction may rewrite")
        let bytesBefore = store.segments.reduce(0) { $0 + $1.byteSize }

        let report = try await store.compact()
        // The aborted parts' chunks, the left-out part's, and every create and part record; the
        // abort goes at the next compaction, once its upload's creation is gone from the log
        // (dropped alone, a creation left behind would reopen the upload at the next start).
        let uploadRecords = before.filter { $0.type.isUploadRecord }.count
        #expect(uploadRecords == 2 + 5 + 1)
        #expect(report.recordsDropped == droppedChunks.count + uploadRecords - 1)
        #expect(try await store.records(after: .zero).collect().filter { $0.type.isUploadRecord }.map(\.type) == [.uploadAbort])
        let second = try await store.compact()
        #expect(second.recordsDropped == 1)
        #expect(store.segments.reduce(0) { $0 + $1.byteSize } < bytesBefore)
        let after = try await store.records(after: .zero).collect()
        #expect(!after.contains { $0.type == .chunk && droppedGroups.contains(chunkGroup($0)!) })
        #expect(!after.contains { $0.type.isUploadRecord })
        // The completed object's manifest and every one of its chunks are kept.
        let kept = after.filter { $0.type == .chunk && [d1.group, d2.group].contains(chunkGroup($0)!) }
        #expect(kept.count == Int(d1.chunkCount + d2.chunkCount))
        #expect(after.contains { $0.type == .manifest && $0.key == key("done") })
        #expect(try await store.value("done") == d1bytes + d2bytes)
        #expect(try store.head(key("done"))?.parts == [d1.summary, d2.summary])
        #expect(try store.listUploads().uploads.isEmpty)

        await store.close()
        let reopened = try await f.open()
        #expect(try await reopened.value("done") == d1bytes + d2bytes)
        #expect(try reopened.head(key("done"))?.contentChecksum == Manifest.checksum(ofParts: [d1.summary, d2.summary]))
        #expect(try reopened.listUploads().uploads.isEmpty)
        #expect { try reopened.listParts(of: gone) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect(try reopened.head(key("gone")) == nil)
        await reopened.close()
    }

    // MARK: - A part taken while compaction runs

    /// A group of chunks old enough to count as abandoned when compaction plans, made a part of
    /// an open upload while the compaction rewrites (the part durable before the rewrite is
    /// swapped in): its chunks are kept, and the upload completes.
    @Test func aPartTakenDuringACompactionKeepsItsChunks() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let gated = GatedFileSystem(wrapping: CrashSimulatingFileSystem())
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.abandonedUploadTimeout = .seconds(60)
            $0.uploadClockSkewAllowance = .zero
            $0.now = { clock.now }
            $0.fileSystem = gated
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 71)
        let group = UploadID(high: 0xC0, low: 1)
        let bytes = randomBytes(2500, &rng)
        let part = ManifestPart.of(number: 1, group: group, bytes: bytes)
        // The chunks at t0, the upload created at t0 + 50 s; filler seals them; at t0 + 61 s the
        // chunks are past the timeout by this node's clock (no part names them yet).
        try await log.appendChunks("late", group: group, bytes: bytes)
        clock.advance(seconds: 50)
        let upload = UploadID(high: 0xC1, low: 1)
        try await log.create("late", upload)
        try await log.fill(count: 12)
        try await store.setCommitWatermark(store.highestLSN)
        clock.advance(seconds: 11)

        let gate = gated.holdNextSync(matching: ".seg.tmp")
        defer { gate.open() }
        let compaction = Task { try await store.compact() }
        #expect(await gate.waitUntilReached(timeout: .seconds(5)), "compaction never reached its output's fsync")
        // Planned as abandoned; now the part record makes the group a part of the open upload.
        let record = log.partRecord("late", upload, part, seq: log.next())
        try store.check(record)
        try await store.append([record])
        gate.open()
        _ = try await compaction.value
        let chunks = try await store.records(after: .zero).collect().filter { $0.type == .chunk }
        #expect(chunks.count == Int(part.chunkCount), "the part's chunks were collected under it")
        let complete = log.completeRecord("late", upload, parts: [part])
        try store.check(complete)
        try await log.append(complete)
        #expect(try await store.value("late") == bytes)
        await store.close()
    }

    // MARK: - Expiry

    @Test func expiredUploadIsUnlistedRefusedAndCollected() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.abandonedUploadTimeout = .seconds(60)
            $0.uploadClockSkewAllowance = .zero
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 64)

        let old = UploadID(high: 0xE0, low: 1)
        try await log.create("old", old)
        let o1 = try await log.part("old", old, number: 1, group: UploadID(high: 0xE1, low: 0), bytes: randomBytes(1500, &rng))
        clock.advance(seconds: 30)
        let young = UploadID(high: 0xF0, low: 1)
        try await log.create("young", young)
        let y1bytes = randomBytes(1300, &rng)
        let y1 = try await log.part("young", young, number: 1, group: UploadID(high: 0xF1, low: 0), bytes: y1bytes)
        try await log.fill(count: 12)
        try await store.setCommitWatermark(store.highestLSN)
        func uploadRecords() async throws -> [EncodedRecord] {
            try await store.records(after: .zero).collect().filter { $0.type.isUploadRecord || $0.type == .chunk }
        }
        let all = try await uploadRecords()
        #expect(all.count == 2 * 2 + Int(o1.chunkCount + y1.chunkCount))

        // t0 + 59 s: both open; compaction keeps everything.
        clock.advance(seconds: 29)
        #expect(try store.listUploads().uploads.map(\.id) == [old, young])
        #expect(try store.listParts(of: old).parts.map(\.manifestPart) == [o1])
        try await store.compact()
        #expect(try await uploadRecords().map(\.lsn) == all.map(\.lsn))

        // t0 + 61 s: the old one is past its time.
        clock.advance(seconds: 2)
        // Compaction goes by the log's time: until a record stamped past the deadline is in the
        // log (a member that lags has not seen one), the upload is not collected.
        try await store.compact()
        #expect(try await uploadRecords().map(\.lsn) == all.map(\.lsn))
        try await log.fill(count: 1)
        try await store.setCommitWatermark(store.highestLSN)
        #expect(try store.listUploads().uploads.map(\.id) == [young])
        #expect { try store.listParts(of: old) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect(try store.listParts(of: young).parts.map(\.manifestPart) == [y1])
        #expect { try store.check(log.partRecord("old", old, o1)) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect { try store.check(log.completeRecord("old", old, parts: [o1])) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }

        let report = try await store.compact()
        #expect(report.recordsDropped >= 2 + Int(o1.chunkCount))
        let left = try await uploadRecords()
        #expect(!left.contains { $0.key == key("old") }, "the expired upload's create, part and chunks are collected")
        #expect(left.filter { $0.key == key("young") }.count == 2 + Int(y1.chunkCount), "the open upload keeps its records")
        // Still refused after collection (now unknown), and the young one completes.
        #expect { try store.check(log.partRecord("old", old, o1)) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        let complete = log.completeRecord("young", young, parts: [y1])
        try store.check(complete)
        try await log.append(complete)
        #expect(try await store.value("young") == y1bytes)

        await store.close()
        let reopened = try await f.open()
        #expect(try reopened.listUploads().uploads.isEmpty)
        #expect { try reopened.listParts(of: old) } throws: { ($0 as? CatenaError)?.code == .noSuchUpload }
        #expect(try await reopened.value("young") == y1bytes)
        await reopened.close()
    }

    // MARK: - Replaced parts

    @Test func replacedPartsChunksAreCollectedAndTheCurrentOnesKept() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 65)

        let upload = UploadID(high: 0xB0, low: 1)
        try await log.create("r", upload, contentType: "text/plain", metadata: ["a": "b"])
        let p1bytes = randomBytes(1400, &rng)
        let p2bytes = randomBytes(1100, &rng)
        let p1 = try await log.part("r", upload, number: 1, group: UploadID(high: 0xB1, low: 0), bytes: p1bytes)
        let p2old = try await log.part("r", upload, number: 2, group: UploadID(high: 0xB2, low: 0), bytes: randomBytes(1500, &rng))
        let p2 = try await log.part("r", upload, number: 2, group: UploadID(high: 0xB2, low: 1), bytes: p2bytes)
        try await log.fill(count: 12)
        try await store.setCommitWatermark(store.highestLSN)

        let report = try await store.compact()
        #expect(report.recordsDropped == Int(p2old.chunkCount) + 1, "the old part 2's chunks and its part record, nothing else")
        let after = try await store.records(after: .zero).collect()
        let groups = after.compactMap { $0.type == .chunk ? chunkGroup($0) : nil }
        #expect(!groups.contains(p2old.group))
        #expect(groups.filter { $0 == p1.group }.count == Int(p1.chunkCount))
        #expect(groups.filter { $0 == p2.group }.count == Int(p2.chunkCount))
        #expect(after.filter { $0.type == .uploadCreate }.count == 1)
        #expect(after.filter { $0.type == .uploadPart }.map { try! PartRecord(decoding: $0.value).part } == [p1, p2])
        #expect(try store.listParts(of: upload).parts.map(\.manifestPart) == [p1, p2])

        // Reopen from the compacted segment's hint (v2: it keeps the part records' values).
        let hints = try f.fs.contentsOfDirectory(f.directory).filter { $0.hasSuffix(".hint") }
        #expect(hints.count == store.sealedSegments.count)
        let hintBytes = hints.compactMap { f.fs.contents(of: f.directory + "/" + $0) }
        #expect(hintBytes.allSatisfy { $0.count > 6 && $0[4] == 2 && $0[5] == 0 }, "hint files are version 2")
        for part in [p1, p2] {
            let value = PartRecord(upload: upload, part: part).encoded()
            #expect(hintBytes.contains { RangedReadTests.offset(of: value, in: $0) != nil }, "a hint keeps part \(part.number)'s record value")
        }
        await store.close()
        let reopened = try await f.open()
        let log2 = UploadLog(store: reopened, clock: clock, seq: log.seq)
        #expect(try reopened.listParts(of: upload).parts.map(\.manifestPart) == [p1, p2])
        let info = try #require(try reopened.listUploads().uploads.first)
        #expect(info.contentType == "text/plain" && info.userMetadata == ["a": "b"] && info.partCount == 2)
        #expect { try reopened.check(log2.completeRecord("r", upload, parts: [p1, p2old])) } throws: { ($0 as? CatenaError)?.code == .invalidPart }
        let complete = log2.completeRecord("r", upload, parts: [p1, p2], contentType: "text/plain", metadata: ["a": "b"])
        try reopened.check(complete)
        try await log2.append(complete)
        #expect(try await reopened.value("r") == p1bytes + p2bytes)

        // Compact again: the upload's records go, the object's chunks stay.
        try await log2.fill(count: 12)
        try await reopened.setCommitWatermark(reopened.highestLSN)
        try await reopened.compact()
        let final = try await reopened.records(after: .zero).collect()
        #expect(!final.contains { $0.type.isUploadRecord })
        #expect(final.filter { $0.type == .chunk }.count == Int(p1.chunkCount + p2.chunkCount))
        #expect(try await reopened.value("r") == p1bytes + p2bytes)
        await reopened.close()

        let again = try await f.open()
        #expect(try await again.value("r") == p1bytes + p2bytes)
        let head = try #require(try again.head(key("r")))
        #expect(head.parts == [p1.summary, p2.summary])
        #expect(head.contentType == "text/plain")
        #expect(try again.listUploads().uploads.isEmpty)
        await again.close()
    }

    // MARK: - Clock skew allowance

    /// ``StoreConfiguration/uploadClockSkewAllowance``: compaction collects an expired upload
    /// only that much after its timeout (by this node's clock), so that a head whose clock is
    /// behind by up to that much never takes a write for an upload a member has collected.
    /// Within the allowance the upload's current parts must therefore keep their chunks: a
    /// completion the (slow) head takes must still find them here.
    @Test func partsOfAnUploadWithinTheSkewAllowanceKeepTheirChunks() async throws {
        let clock = ManualClock(nanoseconds: Self.t0)
        let f = Fixture(configure: {
            $0.maxValueSize = 64 << 10
            $0.segmentSize = 4096
            $0.requestWindow = .zero
            $0.abandonedUploadTimeout = .seconds(60)
            $0.uploadClockSkewAllowance = .seconds(300)
            $0.now = { clock.now }
        })
        let store = try await f.open()
        let log = UploadLog(store: store, clock: clock)
        var rng = SplitMix64(seed: 66)

        let upload = UploadID(high: 0x5C, low: 1)
        try await log.create("skew", upload)
        let bytes1 = randomBytes(1500, &rng)
        let p1 = try await log.part("skew", upload, number: 1, group: UploadID(high: 0x5C, low: 2), bytes: bytes1)
        try await log.fill(count: 12)
        try await store.setCommitWatermark(store.highestLSN)

        // A completion stamped t0 + 59 s is taken (control: before any compaction).
        let complete = log.completeRecord("skew", upload, parts: [p1], at: Self.t0 + 59 * Self.second)
        #expect(throws: Never.self) { try store.check(complete) }

        // This node's clock: t0 + 61 s, past the timeout, well within the allowance.
        clock.advance(seconds: 61)
        try await store.compact()
        let records = try await store.records(after: .zero).collect()
        #expect(records.filter { $0.type == .uploadCreate || $0.type == .uploadPart }.count == 2, "the upload is not collected yet")
        #expect(records.filter { $0.type == .chunk && chunkGroup($0) == p1.group }.count == Int(p1.chunkCount),
                "the upload is not collected yet, so neither are its current part's chunks")

        // A head whose clock is 2 s behind takes a completion stamped t0 + 59 s: this member
        // (head or replica) must take it too.
        #expect(throws: Never.self) { try store.check(complete) }
        #expect(throws: Never.self) { try store.check(complete, strict: false) }
        await store.close()
    }
}

// MARK: - Helpers

private func randomBytes(_ n: Int, _ rng: inout SplitMix64) -> [UInt8] {
    (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

private func chunkGroup(_ r: EncodedRecord) -> UploadID? {
    RecordExtension.chunkAddress(in: r.extensions)?.upload
}

/// Chunk size of the parts' chunk groups (so a part of 1,500 bytes is 3 chunks).
private let partChunkSize = 512

extension ManifestPart {
    /// Part `number` holding `bytes` in chunk group `group` of `partChunkSize`-byte chunks.
    fileprivate static func of(number: UInt32, group: UploadID, bytes: [UInt8]) -> ManifestPart {
        ManifestPart(number: number, group: group, chunkCount: UInt32((bytes.count + partChunkSize - 1) / partChunkSize),
                     size: UInt64(bytes.count), checksum: XXH3.hash(bytes))
    }
}

/// Builds and appends multipart records in LSN order, stamped with the clock's time.
private final class UploadLog {
    let store: Store
    let clock: ManualClock
    private(set) var seq: UInt64

    init(store: Store, clock: ManualClock, seq: UInt64 = 0) {
        self.store = store
        self.clock = clock
        self.seq = seq
    }

    func next() -> UInt64 {
        seq += 1
        return seq
    }

    /// Re-encodes `r` at the next LSN (records built for `check` carry a placeholder).
    func append(_ r: EncodedRecord) async throws {
        var record = r.decode()
        record.lsn = LSN(epoch: 1, seq: next())
        try await store.append([try record.encoded()])
    }

    func create(_ k: String, _ id: UploadID, contentType: String? = nil, metadata: [String: String] = [:]) async throws {
        let r = Record(type: .uploadCreate, key: key(k), lsn: LSN(epoch: 1, seq: next()), timestamp: clock.now, requestID: id,
                       extensions: RecordExtension.objectFields(contentType: contentType, metadata: metadata))
        let encoded = try r.encoded()
        try store.check(encoded)
        try await store.append([encoded])
    }

    /// The chunk records of `bytes` as group `group` (LSN placeholders: for `check`).
    func chunkRecords(_ k: String, group: UploadID, bytes: [UInt8]) -> [EncodedRecord] {
        stride(from: 0, to: bytes.count, by: partChunkSize).enumerated().map { i, start in
            chunk(k, upload: group, index: UInt32(i), value: Array(bytes[start..<min(start + partChunkSize, bytes.count)]),
                  seq: seq + 1, timestamp: clock.now)
        }
    }

    /// Appends the chunks of `bytes` as group `group`, one append each (`only`: just those indexes).
    func appendChunks(_ k: String, group: UploadID, bytes: [UInt8], only: Set<Int>? = nil) async throws {
        for (i, start) in stride(from: 0, to: bytes.count, by: partChunkSize).enumerated() where only?.contains(i) ?? true {
            let piece = Array(bytes[start..<min(start + partChunkSize, bytes.count)])
            try await store.append([chunk(k, upload: group, index: UInt32(i), value: piece, seq: next(), timestamp: clock.now)])
        }
    }

    /// Uploads part `number` of `upload`: its chunks, then (checked strictly, as the head
    /// does) its part record.
    func part(_ k: String, _ upload: UploadID, number: UInt32, group: UploadID, bytes: [UInt8]) async throws -> ManifestPart {
        let part = ManifestPart.of(number: number, group: group, bytes: bytes)
        try await appendChunks(k, group: group, bytes: bytes)
        let record = partRecord(k, upload, part, seq: next())
        try store.check(record)
        try await store.append([record])
        return part
    }

    func partRecord(_ k: String, _ upload: UploadID, _ part: ManifestPart, seq: UInt64? = nil, at timestamp: UInt64? = nil) -> EncodedRecord {
        try! Record(type: .uploadPart, key: key(k), lsn: LSN(epoch: 1, seq: seq ?? self.seq + 1), timestamp: timestamp ?? clock.now,
                    contentChecksum: part.checksum, value: PartRecord(upload: upload, part: part).encoded()).encoded()
    }

    func completeRecord(_ k: String, _ upload: UploadID, parts: [ManifestPart], seq: UInt64? = nil, at timestamp: UInt64? = nil,
                        contentType: String? = nil, metadata: [String: String] = [:]) -> EncodedRecord {
        try! Record(type: .manifest, key: key(k), lsn: LSN(epoch: 1, seq: seq ?? self.seq + 1), timestamp: timestamp ?? clock.now,
                    contentChecksum: Manifest.checksum(ofParts: parts.map(\.summary)),
                    extensions: RecordExtension.objectFields(contentType: contentType, metadata: metadata),
                    value: Manifest(upload: upload, parts: parts).encoded()).encoded()
    }

    func abortRecord(_ k: String, _ upload: UploadID, seq: UInt64? = nil) -> EncodedRecord {
        try! Record(type: .uploadAbort, key: key(k), lsn: LSN(epoch: 1, seq: seq ?? self.seq + 1), timestamp: clock.now,
                    value: upload.encodedValue).encoded()
    }

    /// Unrelated puts, enough to seal every segment before them.
    func fill(count: Int) async throws {
        for i in 0..<count {
            try await store.append([put("filler-\(i)", [UInt8](repeating: UInt8(i), count: 500), seq: next(), timestamp: clock.now)])
        }
    }
}
