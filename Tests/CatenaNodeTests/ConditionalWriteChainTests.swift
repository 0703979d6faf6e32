import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import Testing

extension InProcessChainTests {
    /// Conditional writes through a 3-node chain: decided at the head against the newest version,
    /// committed or in flight, so concurrent compare-and-swaps never lose an update.
    @Suite("Conditional writes")
    struct ConditionalWrites {
        @Test("concurrent compare-and-swap increments lose no update", .timeLimit(.minutes(1)))
        func casCounter() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                try await client.put("counter", Array("0".utf8), condition: .absent)
                let tasks = 6, increments = 15
                let refusals = try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<tasks {
                        group.addTask {
                            var refused = 0
                            for _ in 0..<increments {
                                while true {
                                    let current = try await client.get("counter")
                                    let n = Int(String(decoding: current.bytes, as: UTF8.self))!
                                    do throws(CatenaError) {
                                        try await client.put("counter", Array(String(n + 1).utf8), condition: .version(current.info.lsn))
                                        break
                                    } catch {
                                        guard error.code == .preconditionFailed else { throw error }
                                        refused += 1
                                    }
                                }
                            }
                            return refused
                        }
                    }
                    return try await group.reduce(0, +)
                }
                let final = try await client.get("counter")
                #expect(String(decoding: final.bytes, as: UTF8.self) == String(tasks * increments))
                // Every read-modify-write that lost a race was refused, never applied twice.
                #expect(refusals > 0, "the tasks raced (\(refusals) refusals)")
            }
        }

        @Test("create-only: of racing creators exactly one wins; checksum and version conditions; conditional deletes",
              .timeLimit(.minutes(1)))
        func createOnlyChecksumAndDelete() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let winners = await withTaskGroup(of: Bool.self) { group in
                    for i in 0..<8 {
                        group.addTask {
                            do throws(CatenaError) {
                                try await client.put("lock", Array("owner-\(i)".utf8), condition: .absent)
                                return true
                            } catch {
                                #expect(error.code == .preconditionFailed, "\(error)")
                                return false
                            }
                        }
                    }
                    return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                }
                #expect(winners == 1)

                let v1 = try await client.put("doc", Array("one".utf8))
                let byChecksum = try await client.put("doc", Array("two".utf8), condition: .contentChecksum(XXH3.hash(Array("one".utf8))))
                await #expect(throws: CatenaError.self) {
                    try await client.put("doc", Array("three".utf8), condition: .contentChecksum(XXH3.hash(Array("one".utf8))))
                }
                do throws(CatenaError) {
                    try await client.put("doc", Array("three".utf8), condition: .version(v1.lsn))
                    Issue.record("a put against a superseded version was applied")
                } catch {
                    #expect(error.code == .preconditionFailed)
                    #expect(error.message.contains("\(byChecksum.lsn)"), "the refusal names the version found: \(error.message)")
                }
                #expect(try await client.get("doc").bytes == Array("two".utf8))

                // Deletes: refused against the wrong version, applied against the right one; a
                // delete cannot require absence.
                await #expect(throws: CatenaError.self) { try await client.delete("doc", condition: .version(v1.lsn)) }
                #expect(try await client.exists("doc"))
                do throws(CatenaError) {
                    try await client.delete("doc", condition: .absent)
                    Issue.record("a delete conditional on absence was sent")
                } catch {
                    #expect(error.code == .invalidArgument)
                }
                try await client.delete("doc", condition: .version(byChecksum.lsn))
                #expect(try await client.exists("doc") == false)
                // Absent again: a create-only put succeeds.
                try await client.put("doc", Array("four".utf8), condition: .absent)
            }
        }

        @Test("a chunked put's condition is decided at its manifest", .timeLimit(.minutes(1)))
        func chunkedPutCondition() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let big = pseudoRandomBytes(3 << 20 + 5, seed: 7)
                let first = try await client.put("big", big, condition: .absent)
                #expect(try await client.head("big").chunkCount > 1)
                do throws(CatenaError) {
                    try await client.put("big", Array(big.reversed()), condition: .absent)
                    Issue.record("a create-only chunked put over an existing object was applied")
                } catch {
                    #expect(error.code == .preconditionFailed)
                }
                #expect(try await client.head("big").lsn == first.lsn)
                let second = try await client.put("big", Array(big.reversed()), condition: .version(first.lsn))
                #expect(try await client.head("big").lsn == second.lsn)
                #expect(try await client.get("big").bytes == Array(big.reversed()))
            }
        }
    }
}
