import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Testing

extension InProcessChainTests {
    /// Ambiguous outcomes settled: a write that timed out names its request id, and
    /// `outcome(ofWrite:key:)` answers for good whether it applied.
    @Suite("Settling ambiguous writes")
    struct Settle {
        @Test("a write that timed out at a stalled tail is settled as applied once it commits", .timeLimit(.minutes(1)))
        func timedOutWriteIsSettledAsApplied() async throws {
            let tailDisk = GatedFileSystem(wrapping: PosixFileSystem())
            try await withTestCluster(.init(node: { i, configuration in
                if i == 2 { configuration.store.fileSystem = tailDisk }
            })) { cluster in
                let client = cluster.client
                try await client.put("warm", [1])
                let gate = tailDisk.holdNextSync(matching: ".seg")
                var ambiguous: CatenaError?
                do throws(CatenaError) {
                    try await client.with(requestTimeout: .milliseconds(300)).put("k", Array("v1".utf8))
                    Issue.record("the write committed though the tail's fsync was held")
                } catch {
                    ambiguous = error
                }
                let error = try #require(ambiguous)
                #expect(error.code == .timeout, "\(error)")
                let id = try #require(error.requestID, "a timeout names the write's request id")
                // The head took the write: the settlement waits for its commit.
                let settled = Task { try await client.outcome(ofWrite: id, key: "k") }
                try await Task.sleep(for: .milliseconds(100))
                gate.open()
                guard case .applied(let lsn) = try await settled.value else {
                    Issue.record("a write the head took was settled as not applied")
                    return
                }
                let object = try await client.get("k")
                #expect(object.info.lsn == lsn && object.bytes == Array("v1".utf8))
                #expect(try await client.outcome(ofWrite: id, key: "k") == .applied(lsn), "asked again: the same answer")
            }
        }

        @Test("a write the head never took is settled as not applied, and a late copy of it is refused", .timeLimit(.minutes(1)))
        func neverTakenWriteIsFenced() async throws {
            try await withTestCluster { cluster in
                let client = cluster.client
                let id = RequestID.random()
                #expect(try await client.outcome(ofWrite: id, key: "late") == .notApplied)
                #expect(try await client.outcome(ofWrite: id, key: "late") == .notApplied, "asked again: the same answer")
                // The write itself arrives late (a connection or a paused node held it back).
                let connection = try await RequestConnection.connect(
                    to: cluster.head.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "late"))
                defer { Task { await connection.close() } }
                let late = WriteRequest(requestID: id, type: .put, key: try Key("late"), value: [1, 2, 3])
                do throws(CatenaError) {
                    _ = try await connection.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(late)), timeout: .seconds(10))
                    Issue.record("a write settled as not applied was applied")
                } catch {
                    #expect(error.code == .notApplied, "\(error)")
                }
                #expect(try await client.exists("late") == false)
                // The fence is replicated: a new head refuses the write too.
                let n1 = try NodeID("n1")
                await cluster.stopNode(n1)
                try await cluster.waitFor("the master removed n1") { await cluster.master.configuration.role(of: n1) == nil }
                let newHead = try #require(await cluster.master.configuration.head)
                #expect(try await client.outcome(ofWrite: id, key: "late") == .notApplied)
                let retried = WriteRequest(requestID: id, type: .put, key: try Key("late"), value: [1, 2, 3])
                let atNewHead = try await RequestConnection.connect(
                    to: try Address(parsing: newHead.address), hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "late2"))
                defer { Task { await atNewHead.close() } }
                do throws(CatenaError) {
                    _ = try await atNewHead.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(retried)), timeout: .seconds(10))
                    Issue.record("the new head applied a write settled as not applied")
                } catch {
                    #expect(error.code == .notApplied, "\(error)")
                }
            }
        }
    }
}
