import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Foundation
import Synchronization
import Testing

/// Durability under power loss, disk full and failed fsyncs, proved on the crash-simulating file
/// system (which forgets everything not synced), plus one group-commit run on the real disk.
@Suite("Durability")
struct DurabilityTests {
    /// After a writeback error Linux marks the pages clean: a restart without a power cut sees
    /// the failed records in the page cache, and a sync at open "succeeds" without writing them.
    /// The store must not call them durable then (a replica would acknowledge them), nor after
    /// the power cut that loses them.
    @Test func afterAFailedFsyncARestartDoesNotTrustWhatThePageCacheShows() async throws {
        let fs = CrashSimulatingFileSystem()
        let fixture = Fixture(fs: fs)
        let store = try await fixture.open()
        try await store.append([put("a", bytes("a1"), seq: 1), put("b", bytes("b1"), seq: 2)])
        fs.failNextSync(losingDirtyPages: true)
        await #expect { try await store.append([put("a", bytes("a2"), seq: 3)]) } throws: {
            ($0 as? CatenaError)?.code == .ioFailure
        }
        await store.close()

        // A process restart: the page cache still holds seq 3.
        let restarted = try await fixture.open()
        #expect(restarted.highestLSN.seq == 2 && restarted.lastEnqueuedLSN.seq == 2)
        #expect(try await restarted.value("a") == bytes("a1"))
        // It writes on from there, and that is durable.
        try await restarted.append([put("c", bytes("c1"), seq: 3)])
        await restarted.close()
        fs.crash()
        let afterPowerCut = try await fixture.open()
        #expect(afterPowerCut.damage.isEmpty)
        #expect(try await afterPowerCut.records(after: .zero).collect().map(\.lsn.seq) == [1, 2, 3])
        #expect(try await afterPowerCut.value("c") == bytes("c1"))
        #expect(try await afterPowerCut.value("a") == bytes("a1"))
        #expect(!fs.fileExists("/data/n1/SYNCFAILED"))
        await afterPowerCut.close()
    }

    // MARK: - 1. Power loss at a random point under concurrent appenders

    /// The keys the crash workload writes.
    static let crashKeys = (0..<6).map { "key\($0)" }

    /// Assigns LSNs and enqueues atomically, and remembers what was enqueued and acknowledged.
    final class Sequencer: Sendable {
        struct State {
            var next: UInt64 = 1
            /// Every record the store accepted, in LSN order (`enqueued[seq - 1]`).
            var enqueued: [EncodedRecord] = []
            var highestAcknowledged: UInt64 = 0
            var acknowledgedAppends = 0
            var stopped = false
        }
        let state = Mutex(State())

        /// Builds the records for the next seqs with `make` and enqueues them, under one lock, so
        /// LSN order and enqueue order agree. Nil once the store refused an append.
        func enqueue(on store: Store, _ make: (UInt64) -> [EncodedRecord]) -> (AppendTicket, UInt64)? {
            state.withLock { s -> (AppendTicket, UInt64)? in
                guard !s.stopped else { return nil }
                let records = make(s.next)
                do {
                    let ticket = try store.enqueue(records)
                    s.enqueued += records
                    s.next += UInt64(records.count)
                    return (ticket, s.next - 1)
                } catch {
                    // The store failed (power loss) or refused: nobody appends any more.
                    s.stopped = true
                    return nil
                }
            }
        }

        func acknowledged(through seq: UInt64) {
            state.withLock {
                $0.highestAcknowledged = max($0.highestAcknowledged, seq)
                $0.acknowledgedAppends += 1
            }
        }
    }

    /// 200 seeds, in 8 groups run in parallel (one store at a time per group).
    @Test(arguments: 0..<8)
    func powerLossAtARandomPointKeepsAPrefixWithEveryAcknowledgedWrite(group: Int) async throws {
        for seed in UInt64(group * 25)..<UInt64(group * 25 + 25) {
            try await crashScenario(seed: seed)
        }
    }

    func crashScenario(seed: UInt64) async throws {
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 17)
        let durability: Durability = seed % 3 == 2 ? .always : .batch
        let smallSegments = seed % 2 == 1
        let fs = CrashSimulatingFileSystem()
        let fixture = Fixture(fs: fs) { c in
            c.durability = durability
            c.readThreads = 1
            if smallSegments { c.segmentSize = 8 << 10 }
        }
        let store = try await fixture.open()

        let tasks = 2 + Int(seed % 4)
        let perTask = Int.random(in: 8...30, using: &rng)
        let totalAppends = tasks * perTask
        // Sometimes the power never fails; otherwise after a random number of mutating operations.
        let powerLossAfter: Int? = rng.next() % 8 == 0 ? nil : Int.random(in: 0...(2 * totalAppends + 4), using: &rng)
        if let powerLossAfter { fs.failAfter(operations: powerLossAfter) }

        let sequencer = Sequencer()
        let taskSeeds = (0..<tasks).map { _ in rng.next() }
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<tasks {
                let taskSeed = taskSeeds[t]
                group.addTask {
                    var local = SplitMix64(seed: taskSeed)
                    for _ in 0..<perTask {
                        let count = local.next() % 5 == 0 ? Int.random(in: 2...3, using: &local) : 1
                        let plan: [(key: String, value: [UInt8]?)] = (0..<count).map { _ in
                            let k = DurabilityTests.crashKeys[Int.random(in: 0..<DurabilityTests.crashKeys.count, using: &local)]
                            if local.next() % 6 == 0 { return (k, nil) }
                            let length = Int.random(in: 0...(smallSegments ? 700 : 300), using: &local)
                            return (k, (0..<length).map { _ in UInt8.random(in: 0...255, using: &local) })
                        }
                        guard let (ticket, last) = sequencer.enqueue(on: store, { first in
                            plan.enumerated().map { i, p in
                                let seq = first + UInt64(i)
                                return p.value.map { put(p.key, $0, seq: seq) } ?? del(p.key, seq: seq)
                            }
                        }) else { return }
                        do {
                            try await ticket.durable()
                            sequencer.acknowledged(through: last)
                        } catch {
                            return
                        }
                    }
                }
            }
        }

        let (enqueued, acknowledged) = sequencer.state.withLock { ($0.enqueued, $0.highestAcknowledged) }
        if powerLossAfter == nil {
            #expect(acknowledged == UInt64(enqueued.count), "seed \(seed): no power loss, yet not every append was acknowledged")
        }
        fs.crash(tornWrites: true, using: &rng)
        await store.close()  // only stops the old store's threads: its handles died in the crash

        let context = "seed \(seed) (\(durability), \(smallSegments ? "8 KiB" : "64 MiB") segments, power loss after \(powerLossAfter.map(String.init) ?? "never"), \(enqueued.count) enqueued, acknowledged through \(acknowledged))"
        do {
            try await Self.verifyRecovery(fixture, enqueued: enqueued, acknowledged: acknowledged, keys: Self.crashKeys, context: context)
        } catch {
            Issue.record("\(context): \(error)")
        }
    }

    /// Reopens the store after a crash and checks that it holds exactly a prefix 1...k of
    /// `enqueued` with k >= `acknowledged`, byte for byte, that every key shows its last write in
    /// that prefix, and that the log continues at k + 1.
    static func verifyRecovery(_ fixture: Fixture, enqueued: [EncodedRecord], acknowledged: UInt64, keys: [String],
                               context: String) async throws {
        let reopened: Store
        do {
            reopened = try await fixture.open()
        } catch {
            Issue.record("\(context): reopening after the crash failed: \(error)")
            return
        }
        #expect(reopened.damage.isEmpty, "\(context): damage \(reopened.damage)")

        var recovered: [EncodedRecord] = []
        do {
            recovered = try await reopened.records(after: .zero).collect()
        } catch {
            Issue.record("\(context): streaming the recovered log failed: \(error)")
        }
        // If streaming failed, judge the rest by the highest LSN the store recovered.
        let k = recovered.isEmpty ? Int(reopened.highestLSN.seq) : recovered.count
        if !recovered.isEmpty || k == 0 {
            // A prefix 1...k of what was enqueued, with k covering every acknowledged record.
            #expect(recovered.map(\.lsn.seq) == (0..<k).map { UInt64($0 + 1) }, "\(context): recovered LSNs are not a prefix")
        }
        #expect(UInt64(k) >= acknowledged, "\(context): only \(k) records survived")
        #expect(k <= enqueued.count, "\(context): \(k) records survived of \(enqueued.count)")
        for r in recovered where r.lsn.seq >= 1 && Int(r.lsn.seq) <= enqueued.count {
            #expect(r.bytes == enqueued[Int(r.lsn.seq) - 1].bytes, "\(context): record \(r.lsn) differs from what was appended")
        }
        #expect(reopened.highestLSN.seq == UInt64(k), "\(context)")

        // Every key shows its last write within the prefix, byte for byte (nothing half-visible).
        var model: [String: [UInt8]] = [:]
        for r in enqueued.prefix(k) {
            model[r.key.string] = r.type == .delete ? nil : Array(r.value)
        }
        for name in keys {
            do {
                let value = try await reopened.value(name)
                #expect(value == model[name], "\(context): key \(name) has the wrong value")
            } catch {
                Issue.record("\(context): reading \(name) failed: \(error)")
            }
        }
        #expect(try reopened.allKeys() == model.keys.sorted(), "\(context)")

        // The log continues at k + 1.
        let next = UInt64(k + 1)
        try await reopened.append([put(keys[0], bytes("after"), seq: next)])
        #expect(try await reopened.value(keys[0]) == bytes("after"), "\(context)")
        #expect(reopened.highestLSN.seq == next, "\(context)")
        await reopened.close()
        let again = try await fixture.open()
        #expect(again.damage.isEmpty, "\(context): damage at the second start-up \(again.damage)")
        #expect(try await again.value(keys[0]) == bytes("after"), "\(context): the write after recovery")
        #expect(again.highestLSN.seq == next, "\(context)")
        await again.close()
    }

    /// A power cut between the write and the fsync of a multi-record group commit, torn 300
    /// ways (deterministic: one appender). The torn bytes may end in garbage that reaches back
    /// over a record boundary: that is still a torn tail, never corruption of acknowledged data.
    @Test func powerCutsDuringAMultiRecordGroupCommitLeaveAPrefix() async throws {
        let keys = ["a", "b", "c", "d"]
        for seed in 0..<300 as Range<UInt64> {
            var rng = SplitMix64(seed: seed)
            let fs = CrashSimulatingFileSystem()
            let fixture = Fixture(fs: fs) { c in
                c.durability = .always
                c.readThreads = 1
            }
            let store = try await fixture.open()
            var enqueued: [EncodedRecord] = []
            for seq in 1...6 as ClosedRange<UInt64> {
                let r = put(keys[Int(seq) % 4], (0..<Int.random(in: 1...120, using: &rng)).map { UInt8(truncatingIfNeeded: $0) }, seq: seq)
                try await store.append([r])
                enqueued.append(r)
            }
            // The batch's write succeeds, then the power goes: its fsync never happens.
            fs.failAfter(operations: 1)
            let batch: [EncodedRecord] = (7...12 as ClosedRange<UInt64>).map { seq in
                rng.next() % 2 == 0 ? del(keys[Int(seq) % 4], seq: seq) : put(keys[Int(seq) % 4], [UInt8(seq)], seq: seq)
            }
            await #expect { try await store.append(batch) } throws: { ($0 as? CatenaError)?.code == .ioFailure }
            enqueued += batch
            fs.crash(tornWrites: true, using: &rng)
            await store.close()
            do {
                try await Self.verifyRecovery(fixture, enqueued: enqueued, acknowledged: 6, keys: keys, context: "seed \(seed)")
            } catch {
                Issue.record("seed \(seed): \(error)")
            }
        }
    }

    // MARK: - 2. Durability .none loses acknowledged writes

    @Test func durabilityNoneLosesAcknowledgedWritesInAPowerCut() async throws {
        for durability in [Durability.none, .batch] {
            let fs = CrashSimulatingFileSystem()
            let fixture = Fixture(fs: fs) { $0.durability = durability }
            let store = try await fixture.open()
            for seq in 1...5 as ClosedRange<UInt64> {
                try await store.append([put("k\(seq)", bytes("v\(seq)"), seq: seq)])
            }
            #expect(try await store.value("k5") == bytes("v5"))  // acknowledged and visible
            fs.crash()
            await store.close()
            let reopened = try await fixture.open()
            if durability == .none {
                // The simulator has teeth: nothing was synced, so everything is gone.
                #expect(reopened.highestLSN == .zero)
                #expect(try reopened.allKeys().isEmpty)
                #expect(try await reopened.value("k1") == nil)
            } else {
                #expect(reopened.highestLSN.seq == 5)
                #expect(try reopened.allKeys() == (1...5).map { "k\($0)" })
            }
            await reopened.close()
        }
    }

    @Test func aLoneAppendAndAFullBatchNeverWaitForTheGroupCommitDelayButOthersDo() async throws {
        let fs = CrashSimulatingFileSystem()
        // A delay far longer than the bound below: were the lone append held, the check fails.
        let fixture = Fixture(fs: fs) { c in
            c.groupCommitDelay = .seconds(20)
            c.groupCommitDelayMinAppends = 2
        }
        let store = try await fixture.open()
        let clock = ContinuousClock()
        let start = clock.now
        try await store.append([put("k1", bytes("v1"), seq: 1)])
        #expect(clock.now - start < .seconds(10))
        await store.close()
        fs.crash()
        let reopened = try await fixture.open()
        #expect(reopened.highestLSN.seq == 1)
        await reopened.close()

        // Appends queued together wait for the delay, then share one batch.
        let waits = Fixture(fs: CrashSimulatingFileSystem()) { c in
            c.groupCommitDelay = .milliseconds(200)
            c.groupCommitDelayMinAppends = 1
        }
        let delayed = try await waits.open()
        let before = clock.now
        let tickets = try (1...4 as ClosedRange<UInt64>).map { seq in try delayed.enqueue([put("d\(seq)", bytes("v"), seq: seq)]) }
        for t in tickets { try await t.durable() }
        #expect(clock.now - before >= .milliseconds(200))
        await delayed.close()

        // A batch that already holds `groupCommitDelayMaxAppends` appends is written at once.
        let full = Fixture(fs: CrashSimulatingFileSystem()) { c in
            c.groupCommitDelay = .seconds(20)
            c.groupCommitDelayMinAppends = 1
            c.groupCommitDelayMaxAppends = 1
        }
        let undelayed = try await full.open()
        let start2 = clock.now
        let more = try (1...4 as ClosedRange<UInt64>).map { seq in try undelayed.enqueue([put("f\(seq)", bytes("v"), seq: seq)]) }
        for t in more { try await t.durable() }
        #expect(clock.now - start2 < .seconds(10))
        await undelayed.close()
    }

    // MARK: - Zero-filled segment ends

    /// The lengths of the segment files in the fixture's directory, in id order.
    private static func segmentLengths(_ fs: CrashSimulatingFileSystem) throws -> [Int] {
        try fs.contentsOfDirectory("/data/n1").filter { $0.hasSuffix(".seg") }.sorted().map { name in
            try #require(fs.contents(of: "/data/n1/" + name)).count
        }
    }

    @Test func smallAppendsGoOverAZeroFilledEndThatSealingClosingAndStartUpCutBack() async throws {
        let fs = CrashSimulatingFileSystem()
        let fixture = Fixture(fs: fs) { c in
            c.segmentSize = 16 << 10
            c.zeroFillAhead = 4 << 10
        }
        let store = try await fixture.open()
        let value = [UInt8](repeating: 1, count: 200)
        try await store.append([put("k1", value, seq: 1)])
        let first = try #require(store.segments.last)
        // The first small batch writes its record and 4 KiB of zeros after it; the next lands
        // inside that stretch, so the file's length stays.
        #expect(try Self.segmentLengths(fs) == [Int(first.byteSize) + (4 << 10)])
        try await store.append([put("k2", value, seq: 2)])
        #expect(try Self.segmentLengths(fs) == [Int(first.byteSize) + (4 << 10)])
        #expect(try #require(store.segments.last).byteSize > first.byteSize)
        for seq in 3...200 as ClosedRange<UInt64> {
            try await store.append([put("k\(seq)", value, seq: seq)])
        }
        // Every sealed segment was cut back to its records; only the active one ends in zeros.
        let infos = store.segments
        let lengths = try Self.segmentLengths(fs)
        #expect(infos.filter(\.sealed).count >= 2)
        #expect(lengths.count == infos.count)
        #expect(Array(lengths.dropLast()) == infos.dropLast().map { Int($0.byteSize) })
        #expect(lengths.last! > Int(infos.last!.byteSize))

        // A power cut: start-up drops the zeros as what they are (nothing torn), keeps every record.
        fs.crash()
        await store.close()
        let reopened = try await fixture.open()
        #expect(reopened.damage.isEmpty)
        #expect(reopened.metrics.tornBytesDropped == 0)
        #expect(reopened.highestLSN.seq == 200)
        #expect(try Self.segmentLengths(fs) == reopened.segments.map { Int($0.byteSize) })
        #expect(try await reopened.value("k1") == value)
        #expect(try await reopened.value("k200") == value)

        // A clean close cuts the active segment back too.
        try await reopened.append([put("k201", value, seq: 201)])
        #expect(try Self.segmentLengths(fs).last! > Int(reopened.segments.last!.byteSize))
        let before = reopened.segments.map { Int($0.byteSize) }
        await reopened.close()
        #expect(try Self.segmentLengths(fs) == before)
        fs.crash()
        let third = try await fixture.open()
        #expect(third.highestLSN.seq == 201)
        #expect(third.metrics.tornBytesDropped == 0)
        await third.close()

        // Turned off, nothing is written beyond the records.
        let plain = Fixture(fs: CrashSimulatingFileSystem(), directory: "/data/n1") { $0.zeroFillAhead = 0 }
        let off = try await plain.open()
        try await off.append([put("k1", value, seq: 1)])
        #expect(try Self.segmentLengths(plain.fs) == off.segments.map { Int($0.byteSize) })
        await off.close()
    }

    @Test func aBatchThatFitsWithoutItsZerosIsWrittenWhenTheDiskIsFull() async throws {
        let fs = CrashSimulatingFileSystem()
        let fixture = Fixture(fs: fs) { $0.zeroFillAhead = 4 << 10 }
        let store = try await fixture.open()
        let value = [UInt8](repeating: 2, count: 900)
        // k1 zero-fills 4 KiB; k2...k5 land inside that stretch; k6 passes its end.
        for seq in 1...5 as ClosedRange<UInt64> {
            try await store.append([put("k\(seq)", value, seq: seq)])
        }
        #expect(try Self.segmentLengths(fs).first! > Int(store.segments[0].byteSize))
        // The write with the zeros fails for lack of space; the batch alone is written.
        fs.failNextWrites(.diskFull)
        try await store.append([put("k6", value, seq: 6)])
        #expect(try Self.segmentLengths(fs) == store.segments.map { Int($0.byteSize) })
        // Space again: the next small batch zero-fills once more.
        try await store.append([put("k7", value, seq: 7)])
        #expect(try Self.segmentLengths(fs) == store.segments.map { Int($0.byteSize) + (4 << 10) })
        // Inside the zero-filled stretch there is nothing to leave out: a full disk fails the append.
        fs.failNextWrites(.diskFull)
        await #expect { try await store.append([put("k8", value, seq: 8)]) } throws: { ($0 as? CatenaError)?.code == .diskFull }
        try await store.append([put("k8", value, seq: 8)])
        await store.close()
        fs.crash()
        let reopened = try await fixture.open()
        #expect(reopened.highestLSN.seq == 8)
        #expect(try await reopened.value("k6") == value)
        #expect(try await reopened.value("k8") == value)
        await reopened.close()
    }

    @Test func garbageInTheZeroFilledEndIsATornWrite() async throws {
        let fs = CrashSimulatingFileSystem()
        let fixture = Fixture(fs: fs) { $0.zeroFillAhead = 4 << 10 }
        let store = try await fixture.open()
        for seq in 1...3 as ClosedRange<UInt64> {
            try await store.append([put("k\(seq)", bytes("v\(seq)"), seq: seq)])
        }
        let end = try #require(store.segments.last).byteSize
        let length = try #require(try Self.segmentLengths(fs).last)
        #expect(length > Int(end) + 16)
        // Half a record's worth of bytes after the last record, as a crash mid-write leaves.
        let path = "/data/n1/" + (try fs.contentsOfDirectory("/data/n1").filter { $0.hasSuffix(".seg") }.sorted().last!)
        let file = try fs.open(path, mode: .readWrite)
        try file.write([0x43, 0x52, 0x45, 0x43, 7, 7, 7], at: end)
        try file.sync()
        file.close()
        fs.crash()
        await store.close()
        let reopened = try await fixture.open()
        #expect(reopened.damage.isEmpty)
        #expect(reopened.metrics.tornBytesDropped == length - Int(end))
        #expect(reopened.highestLSN.seq == 3)
        #expect(try Self.segmentLengths(fs) == [Int(end)])
        await reopened.close()
    }

    // MARK: - 3. Disk full

    @Test func diskFullFailsTheAppendAndEverythingQueuedBehindItAndTheStoreKeepsServing() async throws {
        let fs = CrashSimulatingFileSystem()
        // One 99-byte record per batch; the writer waits 30 ms for more, so the appends enqueued
        // right after the first are queued behind it when its write fails.
        let fixture = Fixture(fs: fs) { c in
            c.groupCommitDelay = .milliseconds(30)
            c.groupCommitDelayMinAppends = 1
            c.groupCommitMaxBytes = 150
        }
        let store = try await fixture.open()
        let ten = { (s: String) in bytes(String(repeating: s, count: 10)) }
        try await store.append([put("a", ten("1"), seq: 1)])

        fs.failNextWrites(.diskFull)
        let t2 = try store.enqueue([put("a", ten("2"), seq: 2)])
        let t3 = try store.enqueue([put("b", ten("3"), seq: 3)])
        let t4 = try store.enqueue([del("a", seq: 4)])
        await #expect { try await t2.durable() } throws: { ($0 as? CatenaError)?.code == .diskFull }
        await #expect { try await t3.durable() } throws: { ($0 as? CatenaError)?.code == .diskFull }
        await #expect { try await t4.durable() } throws: { ($0 as? CatenaError)?.code == .diskFull }

        // Nothing of them is visible; the store still serves and still accepts seq 2.
        #expect(try await store.value("a") == ten("1"))
        #expect(try await store.value("b") == nil)
        #expect(store.highestLSN.seq == 1)
        #expect(try await store.records(after: .zero).collect().map(\.lsn.seq) == [1])
        try await store.append([put("a", ten("5"), seq: 2)])
        try await store.append([put("b", ten("6"), seq: 3)])
        #expect(try await store.value("a") == ten("5"))
        #expect(try await store.value("b") == ten("6"))
        await store.close()

        fs.crash()  // acknowledged means synced
        let reopened = try await fixture.open()
        #expect(reopened.damage.isEmpty)
        #expect(try await reopened.records(after: .zero).collect().map(\.lsn.seq) == [1, 2, 3])
        #expect(try await reopened.value("a") == ten("5"))
        #expect(try await reopened.value("b") == ten("6"))
        await reopened.close()
    }

    @Test func aDiskThatStaysFullAcrossASegmentRollRecoversWhenSpaceIsFreed() async throws {
        let fs = CrashSimulatingFileSystem()
        let fixture = Fixture(fs: fs) { $0.segmentSize = 4096 }
        let store = try await fixture.open()
        let value = [UInt8](repeating: 7, count: 900)
        var seq: UInt64 = 0
        while store.segments.count < 2 {
            seq += 1
            try await store.append([put("k\(seq)", value, seq: seq)])
        }
        // Fill the active segment so that the next append must roll.
        let active = try #require(store.segments.last)
        var size = active.byteSize
        while size + 1000 <= 4096 {
            seq += 1
            try await store.append([put("k\(seq)", value, seq: seq)])
            size += UInt64(put("k\(seq)", value, seq: seq).count)
        }
        let acknowledged = seq
        fs.failNextWrites(.diskFull, count: 1_000_000)
        for _ in 0..<3 {
            await #expect { try await store.append([put("k\(acknowledged + 1)", value, seq: acknowledged + 1)]) } throws: {
                ($0 as? CatenaError)?.code == .diskFull
            }
            #expect(try await store.value("k\(acknowledged)") == value)
            #expect(store.highestLSN.seq == acknowledged)
        }
        fs.failNextWrites(.diskFull, count: 0)  // space freed
        try await store.append([put("k\(acknowledged + 1)", value, seq: acknowledged + 1)])
        try await store.append([put("k\(acknowledged + 2)", value, seq: acknowledged + 2)])
        await store.close()

        fs.crash()
        let reopened = try await fixture.open()
        #expect(reopened.damage.isEmpty)
        #expect(try await reopened.records(after: .zero).collect().map(\.lsn.seq) == Array(1...(acknowledged + 2)))
        for i in 1...(acknowledged + 2) {
            #expect(try await reopened.value("k\(i)") == value)
        }
        await reopened.close()
    }

    // MARK: - 4. Failed fsync

    @Test func aFailedFsyncFailsTheAppendAndPoisonsWritesUntilReopen() async throws {
        for seed in 0..<8 as Range<UInt64> {
            var rng = SplitMix64(seed: seed)
            let fs = CrashSimulatingFileSystem()
            let fixture = Fixture(fs: fs) { $0.durability = seed % 2 == 0 ? .batch : .always }
            let store = try await fixture.open()
            try await store.append([put("a", bytes("a1"), seq: 1), put("b", bytes("b1"), seq: 2)])
            try await store.append([put("a", bytes("a2"), seq: 3)])

            fs.failNextSync()
            await #expect { try await store.append([put("a", bytes("a3"), seq: 4)]) } throws: {
                ($0 as? CatenaError)?.code == .ioFailure
            }
            // Writes are refused, whatever their LSN; reads keep working.
            for seq in [4, 5] as [UInt64] {
                #expect { _ = try store.enqueue([put("c", bytes("c"), seq: seq)]) } throws: {
                    ($0 as? CatenaError)?.code == .ioFailure
                }
            }
            #expect(try await store.value("a") == bytes("a2"))
            #expect(try await store.value("b") == bytes("b1"))
            #expect(try store.head(key("a"))?.lsn.seq == 3)
            #expect(store.highestLSN.seq == 3)
            #expect(try await store.records(after: .zero).collect().map(\.lsn.seq) == [1, 2, 3])

            fs.crash(tornWrites: true, using: &rng)
            await store.close()
            let reopened = try await fixture.open()
            #expect(reopened.damage.isEmpty, "seed \(seed)")
            let seqs = try await reopened.records(after: .zero).collect().map(\.lsn.seq)
            // The failed append may or may not have reached the disk; the acknowledged ones did.
            #expect(seqs == [1, 2, 3] || seqs == [1, 2, 3, 4], "seed \(seed): \(seqs)")
            let a = try await reopened.value("a")
            #expect(a == (seqs.count == 4 ? bytes("a3") : bytes("a2")), "seed \(seed)")
            #expect(try await reopened.value("b") == bytes("b1"))
            let next = UInt64(seqs.count + 1)
            try await reopened.append([put("c", bytes("c"), seq: next)])
            #expect(try await reopened.value("c") == bytes("c"))
            await reopened.close()
        }
    }

    // MARK: - 5. Group commit on the real disk

    @Test func concurrentAppendersOnTheRealDiskShareFsyncs() async throws {
        let tmp = TempDirectory()
        defer { tmp.cleanup() }
        var configuration = StoreConfiguration(directory: tmp.path, clusterID: "test", nodeID: "n1")
        configuration.durability = .batch
        configuration.segmentSize = 256 << 10
        let store = try await Store.open(configuration, logger: quietLogger)
        let tasks = 32, perTask = 120  // fsync speed varies; this keeps the test well under 3 s
        let sequencer = Sequencer()
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<tasks {
                group.addTask {
                    for i in 0..<perTask {
                        guard let (ticket, seq) = sequencer.enqueue(on: store, { seq in
                            [put("t\(t)/\(i)", bytes("value \(t) \(i) @\(seq)"), seq: seq)]
                        }) else { return }
                        do {
                            try await ticket.durable()
                            sequencer.acknowledged(through: seq)
                        } catch {
                            Issue.record("append t\(t)/\(i) failed: \(error)")
                            return
                        }
                    }
                }
            }
        }
        let total = tasks * perTask
        #expect(sequencer.state.withLock { $0.acknowledgedAppends } == total)
        let metrics = store.metrics
        #expect(metrics.appendCalls == total)
        #expect(metrics.batches < metrics.appendCalls, "no group commit: \(metrics)")
        await store.close()

        let reopened = try await Store.open(configuration, logger: quietLogger)
        let enqueued = sequencer.state.withLock { $0.enqueued }
        let recovered = try await reopened.records(after: .zero).collect()
        #expect(recovered.map(\.bytes) == enqueued.map(\.bytes))
        #expect(try reopened.allKeys().count == total)
        for r in enqueued {
            let value = try await reopened.value(r.key.string)
            #expect(value == Array(r.value), "\(r.key) at \(r.lsn)")
        }
        await reopened.close()
    }
}
