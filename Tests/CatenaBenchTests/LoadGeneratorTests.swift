@testable import CatenaBench
import CatenaCore
import Foundation
import Testing

@Suite("Load generator: workload")
struct LoadWorkloadTests {
    @Test func mixParsesWeightsAndPicksInProportion() throws {
        let mix = try LoadWorkload.Mix(parsing: "put=50,get=45,delete=3,head=1,list=1")
        #expect(mix.description == "put=50,get=45,delete=3,head=1,list=1")
        var random = SplitMix64(seed: 1)
        var counts: [LoadWorkload.Operation: Int] = [:]
        for _ in 0..<100_000 { counts[mix.pick(random.next()), default: 0] += 1 }
        #expect((49_000...51_000).contains(counts[.put]!))
        #expect((44_000...46_000).contains(counts[.get]!))
        #expect((2_500...3_500).contains(counts[.delete]!))
        #expect((700...1_300).contains(counts[.list]!))
        // Weights of zero drop out; relative weights need not add up to 100.
        let reads = try LoadWorkload.Mix(parsing: "get=1, put=0")
        #expect(reads.description == "get=1" && !reads.contains(.put))
        for bad in ["", "put", "put=x", "put=-1", "copy=3", "put=1,put=2", "put=0"] {
            #expect(throws: CatenaError.self, "\(bad)") { try LoadWorkload.Mix(parsing: bad) }
        }
    }

    @Test func sizesParseAsFixedRangeOrWeights() throws {
        #expect(try LoadWorkload.SizeDistribution(parsing: "4KiB") == .fixed(4096))
        let range = try LoadWorkload.SizeDistribution(parsing: "1KiB-64KiB")
        #expect(range == .uniform(1024...65536) && range.smallest == 1024 && range.largest == 65536)
        let weighted = try LoadWorkload.SizeDistribution(parsing: "4KiB=90,1MiB=10")
        #expect(weighted == .weighted([4096: 90, 1 << 20: 10]))
        var random = SplitMix64(seed: 2)
        var large = 0
        for _ in 0..<10_000 {
            let n = weighted.pick(random.next())
            #expect(n == 4096 || n == 1 << 20)
            if n == 1 << 20 { large += 1 }
            #expect(range.pick(random.next()) >= 1024 && range.pick(random.next()) <= 65536)
        }
        #expect((800...1_200).contains(large))
        for bad in ["", "4XB", "64KiB-1KiB", "4KiB=0", "4KiB=x"] {
            #expect(throws: CatenaError.self, "\(bad)") { try LoadWorkload.SizeDistribution(parsing: bad) }
        }
    }

    @Test func durationsAndKeys() {
        #expect(parseDuration("30s") == .seconds(30))
        #expect(parseDuration("2m") == .seconds(120))
        #expect(parseDuration("500ms") == .milliseconds(500))
        #expect(parseDuration("1.5") == .milliseconds(1500))
        #expect(parseDuration("ten") == nil && parseDuration("5d") == nil && parseDuration("-1s") == nil)
        let workload = LoadWorkload(mix: try! .init(parsing: "get=1"), sizes: .fixed(64), keys: 1000, keyDistribution: .uniform, prefix: "b/", seed: 0)
        #expect(workload.key(42) == "b/00000042")
        #expect(workload.index(ofKey: "b/00000042") == 42)
        #expect(workload.index(ofKey: "b/00001000") == nil && workload.index(ofKey: "c/00000042") == nil && workload.index(ofKey: "b/42") == nil)
    }

    @Test func zipfIsSkewedOverScatteredKeysAndLatestFavoursTheNewest() {
        let keys = 1000
        var random = SplitMix64(seed: 3)
        let zipf = KeyChooser(keys: keys, distribution: .zipf)
        var counts = [Int](repeating: 0, count: keys)
        for _ in 0..<100_000 { counts[zipf.read(&random, newest: 0)] += 1 }
        let sorted = counts.sorted(by: >)
        // YCSB's zipfian over 1,000 items: the most popular takes about 1/zeta(1000, 0.99) = 13%.
        #expect((11_000...15_500).contains(sorted[0]), "\(sorted.prefix(3))")
        #expect(sorted.prefix(10).reduce(0, +) > 30_000)
        // The hot keys are not simply the first ones.
        let hottest = counts.indices.max { counts[$0] < counts[$1] }!
        let second = counts.indices.filter { $0 != hottest }.max { counts[$0] < counts[$1] }!
        #expect(abs(hottest - second) > 1)
        // Uniform: no key far above its share.
        let uniform = KeyChooser(keys: keys, distribution: .uniform)
        var flat = [Int](repeating: 0, count: keys)
        for _ in 0..<100_000 { flat[uniform.read(&random, newest: 0)] += 1 }
        #expect(flat.max()! < 200 && flat.min()! > 40)
        // Latest: writes go round the keys; reads land mostly just behind the newest write.
        let latest = KeyChooser(keys: keys, distribution: .latest)
        var cursor = 0
        let written = (0..<5).map { _ in latest.write(&random) { defer { cursor += 1 }; return cursor } }
        #expect(written == [0, 1, 2, 3, 4])
        var near = 0
        for _ in 0..<10_000 {
            let k = latest.read(&random, newest: 500)
            if (490...500).contains(k) { near += 1 }
        }
        #expect(near > 3_000)
    }
}

@Suite("Load generator: stamps and verification")
struct LoadVerifierTests {
    let run: UInt64 = 0xABCD

    func stamp(_ writer: UInt32, _ sequence: UInt64, run: UInt64? = nil) -> LoadStamp {
        LoadStamp(run: run ?? self.run, writer: writer, sequence: sequence, keyHash: XXH3.hash(Array("k".utf8)))
    }

    @Test func aStampedValueIsCheckedByteByByte() {
        let s = stamp(3, 17)
        var value = s.value(size: 4099)
        #expect(value.count == 4099)
        #expect(LoadStamp(reading: value) == s)
        #expect(s.patternMatches(value))
        value[2000] ^= 0x01
        #expect(!s.patternMatches(value))
        #expect(LoadStamp(reading: [UInt8](repeating: 0, count: 64)) == nil)
        #expect(stamp(3, 18).value(size: 64) != s.value(size: 64))
    }

    /// A verifier holding key 0's writes: `writes` as (stamp, isDelete, invoked, acknowledged LSN and time).
    func verifier(_ writes: [(LoadStamp, Bool, Int64, (LSN, Int64)?)]) -> LoadVerifier {
        let v = LoadVerifier(run: run)
        for (s, isDelete, invoked, ack) in writes {
            v.invoke(key: 0, stamp: s, isDelete: isDelete, checksum: isDelete ? 0 : XXH3.hash(s.value(size: 64)), at: invoked)
            if let (lsn, at) = ack { v.acknowledge(key: 0, name: "k", stamp: s, lsn: lsn, at: at) } else { v.fail(key: 0, stamp: s) }
        }
        return v
    }

    func value(_ s: LoadStamp, at lsn: LSN) -> LoadVerifier.Observation {
        let bytes = s.value(size: 64)
        return .value(lsn: lsn, checksum: XXH3.hash(bytes), bytes: bytes)
    }

    @Test func readsThatALinearizableStoreCouldGivePass() {
        let a = stamp(1, 1), b = stamp(2, 1)
        // a acknowledged at 1.5 (t 10..20); b in flight from t 30, acknowledged at 1.7 at t 60.
        let v = verifier([(a, false, 10, (LSN(epoch: 1, seq: 5), 20)), (b, false, 30, (LSN(epoch: 1, seq: 7), 60))])
        // Before b's acknowledgement a read may see a or b.
        #expect(v.check(key: 0, name: "k", observed: value(a, at: LSN(epoch: 1, seq: 5)), start: 40, end: 50))
        #expect(v.check(key: 0, name: "k", observed: value(b, at: LSN(epoch: 1, seq: 7)), start: 40, end: 50))
        // After it, b.
        #expect(v.check(key: 0, name: "k", observed: value(b, at: LSN(epoch: 1, seq: 7)), start: 70, end: 80))
        #expect(v.check(key: 0, name: "k", observed: .info(lsn: LSN(epoch: 1, seq: 7), checksum: XXH3.hash(b.value(size: 64))), start: 70, end: 80))
        // Before anything of this run was acknowledged, another run's value or none is fine.
        let fresh = verifier([(a, false, 10, nil)])
        #expect(fresh.check(key: 0, name: "k", observed: .absent, start: 5, end: 8))
        #expect(fresh.check(key: 0, name: "k", observed: value(stamp(1, 1, run: 7), at: LSN(epoch: 1, seq: 2)), start: 5, end: 8))
        // A delete in flight, or one that failed (it may have applied), excuses a missing key.
        let deleting = verifier([(a, false, 10, (LSN(epoch: 1, seq: 5), 20)), (stamp(2, 1), true, 30, nil)])
        #expect(deleting.check(key: 0, name: "k", observed: .absent, start: 40, end: 50))
        #expect(v.problemTotal == 0 && fresh.problemTotal == 0 && deleting.problemTotal == 0)
        #expect(v.reads == 4)
    }

    @Test func everyKindOfWrongReadIsCaughtAndNamesTheKey() {
        let a = stamp(1, 1), b = stamp(2, 1)
        let v = verifier([(a, false, 10, (LSN(epoch: 1, seq: 5), 20)), (b, false, 30, (LSN(epoch: 1, seq: 7), 60))])
        // Lost: nothing, or the older version, after b was acknowledged.
        #expect(!v.check(key: 0, name: "k", observed: .absent, start: 70, end: 80))
        #expect(!v.check(key: 0, name: "k", observed: value(a, at: LSN(epoch: 1, seq: 5)), start: 70, end: 80))
        // Damaged: one byte of the value differs from what its stamp says.
        var bytes = b.value(size: 64)
        bytes[40] ^= 0xFF
        #expect(!v.check(key: 0, name: "k", observed: .value(lsn: LSN(epoch: 1, seq: 7), checksum: XXH3.hash(bytes), bytes: bytes), start: 70, end: 80))
        // From the future: a stamp no writer has used yet.
        #expect(!v.check(key: 0, name: "k", observed: value(stamp(1, 9), at: LSN(epoch: 1, seq: 9)), start: 70, end: 80))
        // Another run's value after this run's write was acknowledged.
        #expect(!v.check(key: 0, name: "k", observed: value(stamp(1, 1, run: 7), at: LSN(epoch: 1, seq: 8)), start: 70, end: 80))
        // The right value at the wrong LSN, and a head whose checksum differs from the write at its LSN.
        #expect(!v.check(key: 0, name: "k", observed: value(b, at: LSN(epoch: 1, seq: 8)), start: 70, end: 80))
        #expect(!v.check(key: 0, name: "k", observed: .info(lsn: LSN(epoch: 1, seq: 7), checksum: 1), start: 70, end: 80))
        // A delete acknowledged before the put it should hide does not excuse a missing key.
        let early = verifier([(stamp(3, 1), true, 1, (LSN(epoch: 1, seq: 2), 5)), (a, false, 10, (LSN(epoch: 1, seq: 5), 20))])
        #expect(!early.check(key: 0, name: "k", observed: .absent, start: 30, end: 40))
        #expect(v.problemTotal == 7 && early.problemTotal == 1)
        #expect(v.problemLines.allSatisfy { $0.hasPrefix("k: ") })
    }

    @Test func aWriteInvokedAfterAnotherWasAcknowledgedMustGetALaterLSN() {
        let v = verifier([(stamp(1, 1), false, 10, (LSN(epoch: 2, seq: 5), 20))])
        v.invoke(key: 0, stamp: stamp(2, 1), isDelete: false, checksum: 0, at: 30)
        v.acknowledge(key: 0, name: "k", stamp: stamp(2, 1), lsn: LSN(epoch: 2, seq: 4), at: 40)
        #expect(v.problemTotal == 1)
        #expect(v.problemLines.first?.contains("not a later LSN") == true)
        // Concurrent writes may be ordered either way.
        let w = verifier([(stamp(1, 1), false, 10, (LSN(epoch: 2, seq: 5), 40)), (stamp(2, 1), false, 20, (LSN(epoch: 2, seq: 4), 30))])
        #expect(w.problemTotal == 0)
    }

    @Test func aForgottenDeleteStillExcusesAMissingKeyAndAReusedStampIsReported() {
        let v = LoadVerifier(run: run)
        let p = stamp(1, 1), d = stamp(2, 1)
        // A delete and a put run concurrently; the head orders the put (1.10) before the delete (1.11).
        v.invoke(key: 0, stamp: d, isDelete: true, checksum: 0, at: 10)
        v.invoke(key: 0, stamp: p, isDelete: false, checksum: XXH3.hash(p.value(size: 64)), at: 11)
        v.acknowledge(key: 0, name: "k", stamp: p, lsn: LSN(epoch: 1, seq: 10), at: 20)
        v.acknowledge(key: 0, name: "k", stamp: d, lsn: LSN(epoch: 1, seq: 11), at: 21)
        // A read begins at 100; meanwhile more writes push the delete (the oldest) out of the
        // history, while the put stays: the read must still be allowed to see the delete.
        for i in 0..<(LoadVerifier.historyLimit - 1) {
            let w = stamp(3, UInt64(i + 1))
            v.invoke(key: 0, stamp: w, isDelete: false, checksum: XXH3.hash(w.value(size: 64)), at: 110 + Int64(i))
            v.acknowledge(key: 0, name: "k", stamp: w, lsn: LSN(epoch: 1, seq: 12 + UInt64(i)), at: 200 + Int64(i))
        }
        // The key was absent when the read ran (after the delete, before the next put): correct.
        #expect(v.check(key: 0, name: "k", observed: .absent, start: 100, end: 150))
        #expect(v.problemTotal == 0, "\(v.problemLines)")
        // Stamps never repeat within a run: one used twice is the generator's bug, said so.
        v.invoke(key: 1, stamp: p, isDelete: false, checksum: 1, at: 400)
        v.invoke(key: 1, stamp: p, isDelete: false, checksum: 1, at: 401)
        #expect(v.problemTotal == 1 && v.problemLines.last?.contains("twice") == true)
    }

    @Test func historyStaysBoundedAndKeepsTheNewestAcknowledgedWrite() {
        let v = LoadVerifier(run: run)
        for i in 1...500 {
            let s = stamp(1, UInt64(i))
            v.invoke(key: 0, stamp: s, isDelete: false, checksum: XXH3.hash(s.value(size: 64)), at: Int64(i * 10))
            v.acknowledge(key: 0, name: "k", stamp: s, lsn: LSN(epoch: 1, seq: UInt64(i)), at: Int64(i * 10 + 5))
        }
        #expect(v.problemTotal == 0)
        #expect(!v.check(key: 0, name: "k", observed: value(stamp(1, 499), at: LSN(epoch: 1, seq: 499)), start: 6000, end: 6001))
        #expect(v.check(key: 0, name: "k", observed: value(stamp(1, 500), at: LSN(epoch: 1, seq: 500)), start: 6000, end: 6001))
        #expect(v.writtenKeys == [0])
    }
}
