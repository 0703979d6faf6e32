import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Testing

private func history(count: Int) -> [EncodedRecord] {
    (1...count).map { (i: Int) -> EncodedRecord in
        let name = "k\(i % 5)"
        if i % 7 == 0 { return del(name, seq: UInt64(i)) }
        return put(name, [UInt8](repeating: UInt8(i % 256), count: 150), seq: UInt64(i))
    }
}



private func appendInBatches(_ store: Store, _ records: [EncodedRecord]) async throws {
    for start in stride(from: 0, to: records.count, by: 8) {
        try await store.append(Array(records[start..<min(start + 8, records.count)]))
    }
}

@Suite("Truncation and watermark")
struct TruncationTests {
    @Test(arguments: [0, 1, 37, 120, 199, 200, 250] as [UInt64])
    func truncateRestoresThePrefix(after cut: UInt64) async throws {
        let f = Fixture(configure: { $0.segmentSize = 4096 })
        let store = try await f.open()
        let records = history(count: 200)
        try await appendInBatches(store, records)
        let removed = try await store.truncate(after: LSN(epoch: 1, seq: cut))
        let kept = Int(min(cut, 200))
        #expect(removed == 200 - kept)
        #expect(store.highestLSN.seq == UInt64(kept))
        #expect(try await contents(store) == model(records.prefix(kept)))
        #expect(try await store.records(after: .zero).collect().map(\.lsn.seq) == (0..<kept).map { UInt64($0 + 1) })
        // The log continues right after the cut, possibly in a new epoch.
        try await store.append([put("new", bytes("v"), seq: UInt64(kept + 1), epoch: 2)])
        await store.close()
        let reopened = try await f.open()
        var expected = model(records.prefix(kept))
        expected["new"] = bytes("v")
        #expect(try await contents(reopened) == expected)
        #expect(reopened.highestLSN == LSN(epoch: 2, seq: UInt64(kept + 1)))
        await reopened.close()
    }

    @Test func truncateRefusesToCutCommittedRecords() async throws {
        let store = try await Fixture().open()
        try await appendInBatches(store, history(count: 20))
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 15))
        await #expect { try await store.truncate(after: LSN(epoch: 1, seq: 14)) } throws: {
            ($0 as? CatenaError)?.code == .belowCommitWatermark
        }
        #expect(try await store.truncate(after: LSN(epoch: 1, seq: 15)) == 5)
        await store.close()
    }

    @Test func watermarkIsPersistedAndMonotonic() async throws {
        let f = Fixture()
        let store = try await f.open()
        try await appendInBatches(store, history(count: 10))
        try await store.setCommitWatermark(LSN(epoch: 1, seq: 8))
        await #expect { try await store.setCommitWatermark(LSN(epoch: 1, seq: 7)) } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
        await #expect { try await store.setCommitWatermark(LSN(epoch: 1, seq: 11)) } throws: { ($0 as? CatenaError)?.code == .invalidArgument }
        await store.close()
        var rng = SplitMix64(seed: 3)
        f.fs.crash(tornWrites: true, using: &rng)
        let reopened = try await f.open()
        #expect(reopened.commitWatermark == LSN(epoch: 1, seq: 8))
        await reopened.close()
    }

    /// Cut the power after every file operation of a truncation: the log that reopens is always
    /// a gap-free prefix at least as long as the cut, and truncating again finishes the job.
    @Test func crashSafeAtEveryStep() async throws {
        let records = history(count: 120)
        let cut = LSN(epoch: 1, seq: 30)
        func prepared() async throws -> (Fixture, Store) {
            let f = Fixture(configure: { $0.segmentSize = 4096 })
            let store = try await f.open()
            try await appendInBatches(store, records)
            return (f, store)
        }
        let (f0, s0) = try await prepared()
        let start = f0.fs.mutatingOperationCount
        try await s0.truncate(after: cut)
        let steps = f0.fs.mutatingOperationCount - start
        await s0.close()
        #expect(steps > 5)

        var rng = SplitMix64(seed: 11)
        for k in 0..<steps {
            let (f, store) = try await prepared()
            f.fs.failAfter(operations: k)
            _ = try? await store.truncate(after: cut)
            await store.close()
            f.fs.crash(tornWrites: true, using: &rng)
            let reopened = try await f.open()
            let seqs = try await reopened.records(after: .zero).collect().map(\.lsn.seq)
            #expect(seqs == (0..<seqs.count).map { UInt64($0 + 1) }, "cut after \(k) of \(steps): gap-free prefix")
            #expect(seqs.count >= 30 && seqs.count <= 120)
            #expect(try await contents(reopened) == model(records.prefix(seqs.count)))
            try await reopened.truncate(after: cut)
            #expect(try await contents(reopened) == model(records.prefix(30)))
            await reopened.close()
        }
    }

    /// Discarding the whole log (a node about to copy everything from the tail, after the
    /// tail's compaction dropped history it lacks) is allowed at any watermark, which a running
    /// node now persists: the watermark goes back to zero with the log. Cut the power after
    /// every file operation: the store reopens either untouched, watermark and all, or with the
    /// watermark at zero and a gap-free prefix, and discarding again finishes the job.
    @Test func discardingTheWholeLogResetsTheWatermarkCrashSafely() async throws {
        let records = history(count: 120)
        let watermark = LSN(epoch: 1, seq: 100)
        func prepared() async throws -> (Fixture, Store) {
            let f = Fixture(configure: { $0.segmentSize = 4096 })
            let store = try await f.open()
            try await appendInBatches(store, records)
            try await store.setCommitWatermark(watermark)
            return (f, store)
        }
        let (f0, s0) = try await prepared()
        let start = f0.fs.mutatingOperationCount
        #expect(try await s0.truncate(after: .zero) == 120)
        let steps = f0.fs.mutatingOperationCount - start
        #expect(s0.commitWatermark == .zero && s0.highestLSN == .zero && s0.lastEnqueuedLSN == .zero)
        // A full copy follows: from seq 1 again.
        try await s0.append([put("copied", bytes("v"), seq: 1, epoch: 3)])
        await s0.close()
        let again = try await f0.open()
        #expect(again.commitWatermark == .zero)
        #expect(try await again.records(after: .zero).collect().map(\.lsn) == [LSN(epoch: 3, seq: 1)])
        await again.close()
        #expect(steps > 5)

        var rng = SplitMix64(seed: 12)
        for k in 0..<steps {
            let (f, store) = try await prepared()
            f.fs.failAfter(operations: k)
            _ = try? await store.truncate(after: .zero)
            await store.close()
            f.fs.crash(tornWrites: true, using: &rng)
            let reopened = try await f.open()
            let seqs = try await reopened.records(after: .zero).collect().map(\.lsn.seq)
            #expect(seqs == (0..<seqs.count).map { UInt64($0 + 1) }, "cut after \(k) of \(steps): gap-free prefix")
            if reopened.commitWatermark == watermark {
                #expect(seqs.count == 120, "cut after \(k) of \(steps): records removed while the watermark stayed")
            } else {
                #expect(reopened.commitWatermark == .zero, "cut after \(k) of \(steps)")
            }
            #expect(reopened.highestLSN.seq == UInt64(seqs.count), "the log's end is its last record, not a stale watermark")
            try await reopened.truncate(after: .zero)
            #expect(try await reopened.records(after: .zero).collect().isEmpty)
            await reopened.close()
        }
    }
}
