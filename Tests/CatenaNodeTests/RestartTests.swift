import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaMaster
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaWire
import Foundation
import NIOCore
import Synchronization
import Testing

extension InProcessChainTests {
    /// Restarts, reconnections and request ids: the findings of a review of the chain code, each
    /// a test that failed before its fix.
    @Suite("Restarts and reconnections")
    struct Restarts {
        /// A master whose chain is n1 (head) → n2 (tail), both at port 0 until they register; the
        /// test starts the nodes (or stands in for them).
        static let masterOnly: TestCluster.Options = {
            var options = TestCluster.Options(nodes: 2)
            options.startsNodes = false
            return options
        }()

        @Test("the head's link reconnects after its successor drops the connection with a record unacknowledged", .timeLimit(.minutes(1)))
        func linkReconnects() async throws {
            try await withTestCluster(Self.masterOnly) { cluster in
                let master = cluster.master
                let (n1, n2) = (try NodeID("n1"), try NodeID("n2"))
                // A fake n2: reports position zero, reads one replicate frame, then closes without acknowledging.
                let connections = Mutex(0)
                let fake = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: TestCluster.clusterID, localID: "n2",
                                                      acceptedRoles: [.node], logger: testLogger)
                let fakeTask = Task {
                    await fake.run { (conn, reader) async throws(CatenaError) in
                        connections.withLock { $0 += 1 }
                        let epoch = await master.configuration.epoch
                        try? await conn.outbound.write(Frame(type: .position, chainID: 1, epoch: epoch, payload: LSNPayload.encode(.zero)))
                        _ = try await reader.next()
                    }
                }
                let reg = try await RequestConnection.connect(to: master.address, hello: Hello(role: .node, clusterID: TestCluster.clusterID, senderID: "n2"))
                _ = try await reg.request(Frame(type: .heartbeat, payload: Heartbeat(node: n2, address: "127.0.0.1:\(fake.port)", highestLSN: .zero).encoded()),
                                          timeout: .seconds(2))
                reg.close()
                let node = try #require(try await cluster.startNode(n1))
                try await cluster.waitForConvergence()
                while connections.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(10)) }
                try await Task.sleep(for: .milliseconds(200))
                let before = connections.withLock { $0 }

                let client = try await RequestConnection.connect(to: node.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
                let request = WriteRequest(requestID: RequestID(high: 1, low: 1), type: .put, key: try Key("k"), value: [1, 2, 3])
                let writeTask = Task { try? await client.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(request)), timeout: .seconds(20)) }
                let deadline = ContinuousClock.now + .seconds(10)
                while connections.withLock({ $0 }) <= before && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
                let after = connections.withLock { $0 }
                #expect(after > before, "the head never reconnected to its successor; the write cannot commit")

                client.close()
                writeTask.cancel()
                await cluster.stopNode(n1)
                fake.close(); fakeTask.cancel(); await fakeTask.value
            }
        }

        @Test("a restarted head whose log lacks a record its successor holds never reuses the LSN: it stops, is replaced, and writes go on", .timeLimit(.minutes(2)))
        func headRestartReusesLSN() async throws {
            try await withTestCluster(Self.masterOnly) { cluster in
                let (dir, n1, n2) = (cluster.directory, try NodeID("n1"), try NodeID("n2"))
                // A fixed port for the head, as in topology/local.yaml: its restarts do not change its address.
                let probe = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: TestCluster.clusterID, localID: "p",
                                                       acceptedRoles: [.node], logger: testLogger)
                let headPort = UInt16(probe.port)
                probe.close()
                let atHeadPort: (inout NodeConfiguration) -> Void = { $0.listen = Address(host: "127.0.0.1", port: headPort) }
                try await cluster.startNode(n1, configure: atHeadPort)
                let tail = try #require(try await cluster.startNode(n2))
                try await cluster.waitForConvergence()
                var cc = CatenaClient.Configuration()
                cc.clusterID = TestCluster.clusterID
                cc.requestTimeout = .seconds(3)
                let client = try CatenaClient(masters: [cluster.masterAddress.description], configuration: cc, logger: testLogger)
                try await client.put("k", Array("v0".utf8))

                // Stop the head and keep a copy of its log: the copy stands for "the head crashed
                // after forwarding its last record but before that record reached its disk".
                await cluster.stopNode(n1)
                try FileManager.default.copyItem(atPath: dir + "/n1", toPath: dir + "/n1-snapshot")
                try await cluster.startNode(n1, configure: atHeadPort)
                try await cluster.waitForConvergence()
                let old = try await client.put("k", Array("old".utf8))

                await cluster.stopNode(n1)
                try FileManager.default.removeItem(atPath: dir + "/n1")
                try FileManager.default.moveItem(atPath: dir + "/n1-snapshot", toPath: dir + "/n1")
                try await cluster.startNode(n1, configure: atHeadPort)
                try await cluster.waitForConvergence()

                // The restarted head's log ends before a record its successor holds: it must not hand
                // out that LSN again. It stops (its heartbeats say why), the master replaces it, and
                // the write lands after what the successor held.
                #expect(try tail.localStore.head(try Key("k"))?.lsn == old.lsn)
                var slow = CatenaClient.Configuration()
                slow.clusterID = TestCluster.clusterID
                slow.requestTimeout = .seconds(20)
                let patient = try CatenaClient(masters: [cluster.masterAddress.description], configuration: slow, logger: testLogger)
                let new = try await patient.put("k", Array("new".utf8))
                #expect(new.lsn.seq > old.lsn.seq, "the LSN \(old.lsn) was handed out again: \(new.lsn)")
                #expect(String(decoding: try await patient.get("k").bytes, as: UTF8.self) == "new")
                let status = try await cluster.status()
                #expect(status.nodes.first { $0.id == n1 }?.role == nil, "the head that lost data was replaced")
                await patient.close()
                await client.close()
            }
        }

        @Test("a retry after a head restart is not applied twice", .timeLimit(.minutes(2)))
        func retryAfterHeadRestart() async throws {
            try await withTestCluster(Self.masterOnly) { cluster in
                let (n1, n2) = (try NodeID("n1"), try NodeID("n2"))
                var head = try #require(try await cluster.startNode(n1))
                try await cluster.startNode(n2)
                try await cluster.waitForConvergence()
                let request = WriteRequest(requestID: RequestID(high: 7, low: 7), type: .put, key: try Key("k"), value: [1])
                // As a client does: retry while the head is not ready (it waits for its successor's position).
                func send(_ r: WriteRequest) async throws -> LSN {
                    let c = try await RequestConnection.connect(to: head.address, hello: Hello(role: .client, clusterID: TestCluster.clusterID, senderID: "t"))
                    defer { c.close() }
                    let deadline = ContinuousClock.now + .seconds(10)
                    while true {
                        let reply = await Result.catching { () async throws(CatenaError) in
                            try await c.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(r)), timeout: .seconds(10))
                        }
                        switch reply {
                        case .success(let frame):
                            return try LSNPayload.decode(frame.payload)
                        case .failure(let error):
                            guard error.code == .unavailable, ContinuousClock.now < deadline else { throw error }
                            try await Task.sleep(for: .milliseconds(10))
                        }
                    }
                }
                let first = try await send(request)
                let again = try await send(request)
                await cluster.stopNode(n1)
                head = try #require(try await cluster.startNode(n1))
                try await cluster.waitForConvergence()
                let afterRestart = try await send(request)
                #expect(again == first)
                #expect(afterRestart == first)
                #expect(try head.localStore.head(try Key("k"))?.lsn == first)
            }
        }

        @Test("a write without a request id is refused (it could not be told from another one)", .timeLimit(.minutes(1)))
        func noneRequestIDs() async throws {
            try await withTestCluster(.init(nodes: 2)) { cluster in
                let c = try await cluster.rawConnection(to: cluster.head)
                defer { c.close() }
                for i in 0..<5 {
                    let r = WriteRequest(requestID: .none, type: .put, key: try Key("none/\(i)"), value: [UInt8(i)])
                    await #expect { try await c.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(r)), timeout: .seconds(10)) } throws: {
                        ($0 as? CatenaError)?.code == .invalidArgument
                    }
                }
                #expect(try cluster.head.localStore.list(prefix: Array("none/".utf8)).objects.isEmpty)
            }
        }
    }
}
