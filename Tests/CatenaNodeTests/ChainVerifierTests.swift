@testable import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaStorage
import CatenaTestSupport
import Synchronization
import Testing

/// The comparison rules of `catena chain verify`, pure: who differs from whom, and how; and the
/// lock-step merge of the members' pages.
@Suite("Scrub comparison")
struct ScrubComparisonTests {
    static let members = [try! NodeID("n1"), try! NodeID("n2"), try! NodeID("n3")]
    static let k = try! Key("k")

    static func entry(_ seq: UInt64, size: UInt64 = 10, checksum: UInt64 = 0xAB, problem: String? = nil) -> ScrubEntry {
        ScrubEntry(key: k, lsn: LSN(epoch: 1, seq: seq), size: size, contentChecksum: checksum, problem: problem)
    }

    static func differences(_ entries: [ScrubEntry?]) -> [(ScrubDifference.Kind, String)] {
        ScrubComparison.differences(key: k, members: members, entries: entries).map { ($0.kind, $0.node.rawValue) }
    }

    @Test func membersAgreeOnlyOnTheSameIntactVersionOrOnNothing() {
        #expect(ScrubComparison.agree([Self.entry(5), Self.entry(5), Self.entry(5)]))
        #expect(ScrubComparison.agree([nil, nil, nil]))
        #expect(!ScrubComparison.agree([Self.entry(5), Self.entry(5), nil]))
        #expect(!ScrubComparison.agree([Self.entry(6), Self.entry(5), Self.entry(5)]))
        #expect(!ScrubComparison.agree([Self.entry(5), Self.entry(5), Self.entry(5, checksum: 1)]))
        #expect(!ScrubComparison.agree([Self.entry(5), Self.entry(5), Self.entry(5, size: 11)]))
        // Intact everywhere but one: a corrupt copy never agrees, even with the same version.
        #expect(!ScrubComparison.agree([Self.entry(5), Self.entry(5), Self.entry(5, problem: "checksum")]))
        #expect(!ScrubComparison.agree([Self.entry(5, problem: "a"), Self.entry(5, problem: "a"), Self.entry(5, problem: "a")]))
    }

    @Test func theMemberThatDiffersFromTheOthersIsNamedWithWhatDiffers() {
        let missing = Self.differences([Self.entry(5), Self.entry(5), nil])
        #expect(missing.map(\.0) == [.missing] && missing.map(\.1) == ["n3"])
        let extra = Self.differences([nil, Self.entry(5), nil])
        #expect(extra.map(\.0) == [.extra] && extra.map(\.1) == ["n2"])
        let version = Self.differences([Self.entry(6), Self.entry(5), Self.entry(5)])
        #expect(version.map(\.0) == [.version] && version.map(\.1) == ["n1"])
        let content = Self.differences([Self.entry(5), Self.entry(5, checksum: 7), Self.entry(5)])
        #expect(content.map(\.0) == [.content] && content.map(\.1) == ["n2"])
        let corrupt = Self.differences([Self.entry(5), Self.entry(5), Self.entry(5, problem: "record checksum mismatch")])
        #expect(corrupt.map(\.0) == [.corrupt] && corrupt.map(\.1) == ["n3"])
        // A corrupt copy is reported whatever the others hold, and is never the reference.
        let both = Self.differences([Self.entry(5), nil, Self.entry(4, problem: "x")])
        #expect(both.map(\.0) == [.missing, .corrupt] || both.map(\.0) == [.extra, .corrupt], "\(both)")
        #expect(Self.differences([Self.entry(5, problem: "a"), Self.entry(5, problem: "b"), Self.entry(5, problem: "c")]).map(\.0)
                == [.corrupt, .corrupt, .corrupt])
    }

    @Test func onATieTheCopyNearestTheTailIsTheReference() {
        // Two members: the tail holds what the chain committed.
        let two = Array(Self.members.prefix(2))
        let d = ScrubComparison.differences(key: Self.k, members: two, entries: [Self.entry(6), Self.entry(5)])
        #expect(d.map(\.node.rawValue) == ["n1"] && d.map(\.kind) == [.version])
        #expect(d.first?.detail.contains("n2 hold LSN 1.5") == true, "\(d.first?.detail ?? "")")
        // Three different versions: the tail's is the reference, the others differ from it.
        let three = Self.differences([Self.entry(7), Self.entry(6), Self.entry(5)])
        #expect(three.map(\.1) == ["n1", "n2"])
    }

    @Test func theMergeHandsOutEveryKeyOnceInOrderWithEachMembersEntry() throws {
        func page(_ keys: [String], more: Bool) throws -> ScrubPage {
            let entries = try keys.map { ScrubEntry(key: try Key($0), lsn: LSN(epoch: 1, seq: 1), size: 0, contentChecksum: 0) }
            return ScrubPage(entries: entries, nextCursor: more ? entries.last?.key : nil)
        }
        // Each member's keys, in pages of different sizes.
        let pages: [[ScrubPage]] = [
            [try page(["a", "b"], more: true), try page(["d"], more: true), try page([], more: false)],
            [try page(["a", "c", "d", "e"], more: false)],
            [try page(["b"], more: true), try page(["c"], more: true), try page(["d", "f"], more: false)],
        ]
        var next = [0, 0, 0]
        var merge = ScrubMerge(members: 3)
        var seen: [(String, [Bool])] = []
        var rounds = 0
        while !merge.isDone && rounds < 100 {
            rounds += 1
            let needed = merge.membersNeedingPages
            if !needed.isEmpty {
                let early = merge.next()
                #expect(early == nil, "no key is judged while a member's next key is unknown")
                for i in needed {
                    merge.add(pages[i][next[i]], from: i)
                    next[i] += 1
                }
                continue
            }
            guard let (key, entries) = merge.next() else { break }
            #expect(entries.allSatisfy { $0 == nil || $0!.key == key })
            seen.append((key.string, entries.map { $0 != nil }))
        }
        #expect(seen.map(\.0) == ["a", "b", "c", "d", "e", "f"])
        #expect(seen.map(\.1) == [[true, true, false], [true, false, true], [false, true, true], [true, true, true],
                                  [false, true, false], [false, false, true]])
        #expect(next == [3, 1, 3], "every page was asked for once")
    }
}

extension InProcessChainTests {
    /// `ChainVerifier` against a running 3-node chain.
    @Suite("Chain verify")
    struct ChainVerify {
        static func settings(rechecks: Int = 3, delay: Duration = .milliseconds(100), pageKeys: Int = 16) -> ChainVerifier.Settings {
            var s = ChainVerifier.Settings()
            s.rechecks = rechecks
            s.recheckDelay = delay
            s.pageKeys = pageKeys
            return s
        }

        @Test("a healthy chain: every key compared, every byte read on every member, no differences", .timeLimit(.minutes(1)))
        func healthyChainAgrees() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                var bytes: UInt64 = 0
                for i in 0..<120 {
                    let value = pseudoRandomBytes(100 + i, seed: UInt64(i))
                    try await client.put("v/\(i)", value)
                    bytes += UInt64(value.count)
                }
                for i in stride(from: 0, to: 120, by: 10) { try await client.delete("v/\(i)"); bytes -= UInt64(100 + i) }
                let big = pseudoRandomBytes(3 << 20 | 17, seed: 99)
                try await client.put("v/big", big)
                bytes += UInt64(big.count)
                let progress = StopFlag()
                let report = try await ChainVerifier(admin: cluster.admin, settings: Self.settings()).run(onProgress: { _ in
                    progress.count()
                })
                #expect(report.differences.isEmpty, "\(report.differences)")
                #expect(report.keysCompared == 109)
                #expect(report.members.map(\.rawValue) == ["n1", "n2", "n3"])
                for m in report.members { #expect(report.bytesRead[m] == bytes, "\(m)") }
                #expect(report.unsettled.isEmpty && report.epochAfter == report.epoch)
                #expect(progress.counted >= 109 / 16)
                // A prefix scrubs only its keys.
                let some = try await ChainVerifier(admin: cluster.admin, settings: { var s = Self.settings(); s.prefix = Array("v/1".utf8); return s }()).run()
                #expect(some.keysCompared == 28, "v/1, v/10…v/19, v/100…v/119, less v/10, v/100 and v/110")
                // Paced: no member reads faster than 8 MB/s on average, so the scrub takes its bytes' time.
                var paced = Self.settings()
                paced.maxBytesPerSecond = 8_000_000
                let slow = try await ChainVerifier(admin: cluster.admin, settings: paced).run()
                #expect(slow.differences.isEmpty && slow.keysCompared == 109)
                #expect(slow.elapsed >= .milliseconds(Int(Double(bytes) / 8e6 * 1000)), "\(slow.elapsed) for \(bytes) bytes")
            }
        }

        @Test("a write held at the tail is a difference only while it stays held", .timeLimit(.minutes(1)))
        func aWriteOnItsWayIsNotADifference() async throws {
            let tailDisk = GatedFileSystem(wrapping: PosixFileSystem())
            try await withTestCluster(.init(node: { i, configuration in
                if i == 2 { configuration.store.fileSystem = tailDisk }
            })) { cluster in
                let client = cluster.client
                for i in 0..<20 { try await client.put("w/\(i)", [UInt8(i)]) }
                let gate = tailDisk.holdNextSync(matching: ".seg")
                defer { gate.open() }
                let held = Task { try await client.put("w/held", Array("on its way".utf8)) }
                defer { held.cancel() }
                // The head and the middle hold it (durable there, forwarded), the tail does not.
                let verifier = ChainVerifier(admin: cluster.admin, settings: Self.settings(rechecks: 2))
                var report = try await verifier.run()
                for _ in 0..<50 where report.differences.isEmpty {
                    try await Task.sleep(for: .milliseconds(20))
                    report = try await verifier.run()
                }
                #expect(report.differences.map(\.kind) == [.missing], "\(report.differences)")
                #expect(report.differences.map(\.node.rawValue) == ["n3"])
                #expect(report.differences.first?.key?.string == "w/held")
                #expect(report.keysCompared == 21)
                // Released during the re-checks: it reaches the tail, and nothing is reported.
                let patient = ChainVerifier(admin: cluster.admin, settings: Self.settings(rechecks: 10, delay: .milliseconds(200)))
                async let released: Void = {
                    try? await Task.sleep(for: .milliseconds(300))
                    gate.open()
                }()
                let after = try await patient.run()
                await released
                #expect(after.differences.isEmpty, "\(after.differences)")
                #expect(after.keysCompared == 21)
                _ = try await held.value
            }
        }

        @Test("scrubbing while clients write reports no difference", .timeLimit(.minutes(1)))
        func writesDuringTheScrubAreNoDifferences() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                for i in 0..<200 { try await client.put("busy/\(i)", pseudoRandomBytes(64, seed: UInt64(i))) }
                let stop = StopFlag()
                let writers = (0..<4).map { w in
                    Task {
                        var n = 0
                        while !stop.isSet {
                            // Overwrites across the key range, new keys, deletes.
                            let i = (n * 37 + w * 11) % 260
                            if n % 9 == 8 {
                                _ = try? await client.delete("busy/\(i)")
                            } else {
                                _ = try? await client.put("busy/\(i)", pseudoRandomBytes(64, seed: UInt64(n * 4 + w)))
                            }
                            n += 1
                        }
                        return n
                    }
                }
                let report = try await ChainVerifier(admin: cluster.admin, settings: Self.settings(rechecks: 5, delay: .milliseconds(50), pageKeys: 8)).run()
                stop.set()
                var writes = 0
                for w in writers { writes += await w.value }
                #expect(writes > 10, "the writers wrote during the scrub")
                #expect(report.differences.isEmpty, "\(report.differences)")
                #expect(report.keysCompared >= 150)
            }
        }
    }
}

/// A flag and a counter tasks share.
final class StopFlag: Sendable {
    private let state = Mutex((set: false, count: 0))
    var isSet: Bool { state.withLock { $0.set } }
    func set() { state.withLock { $0.set = true } }
    func count() { state.withLock { $0.count += 1 } }
    var counted: Int { state.withLock { $0.count } }
}
