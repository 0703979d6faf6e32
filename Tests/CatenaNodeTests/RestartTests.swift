import CatenaClient
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
        static let cid = "node-tests"

        static func waitConverged(_ master: Master, _ nodes: [Node]) async throws {
            let deadline = ContinuousClock.now + .seconds(20)
            while true {
                let c = await master.configuration
                if c.members.allSatisfy({ !$0.address.hasSuffix(":0") }) && nodes.allSatisfy({ $0.chainConfiguration == c }) { return }
                guard ContinuousClock.now < deadline else { throw HarnessError(description: "no convergence \(c)") }
                try await Task.sleep(for: .milliseconds(5))
            }
        }

        /// A scratch directory and a running master whose chain is n1 (head) → n2 (tail), both at
        /// port 0 until they register.
        struct TwoNodeSetup {
            let dir: String
            let master: Master
            let masterTask: Task<Void, Never>
            let n1: NodeID
            let n2: NodeID

            static func start() async throws -> TwoNodeSetup {
                let dir = NSTemporaryDirectory() + "catena-restart-" + UUID().uuidString
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let n1 = try NodeID("n1"), n2 = try NodeID("n2")
                let initial = try ChainConfiguration(clusterID: cid, chainID: 1, epoch: 1,
                                                     members: [ChainMember(id: n1, address: "127.0.0.1:0"), ChainMember(id: n2, address: "127.0.0.1:0")])
                let master = try await Master.start(MasterConfiguration(clusterID: cid, listen: Address(host: "127.0.0.1", port: 0),
                                                                        dataDirectory: dir + "/master", initial: initial), logger: testLogger)
                return TwoNodeSetup(dir: dir, master: master, masterTask: Task { await master.run() }, n1: n1, n2: n2)
            }

            /// Node `id`'s configuration: its own data directory here, 20 ms heartbeats.
            func node(_ id: NodeID, port: UInt16 = 0) -> NodeConfiguration {
                var c = NodeConfiguration(id: id, clusterID: cid, listen: Address(host: "127.0.0.1", port: port), masters: [master.address],
                                          dataDirectory: dir + "/\(id)")
                c.heartbeatInterval = .milliseconds(20)
                return c
            }

            func stopMaster() async {
                masterTask.cancel()
                await masterTask.value
            }

            func removeDirectory() {
                try? FileManager.default.removeItem(atPath: dir)
            }
        }

        @Test("the head's link reconnects after its successor drops the connection with a record unacknowledged", .timeLimit(.minutes(1)))
        func linkReconnects() async throws {
            let setup = try await TwoNodeSetup.start()
            defer { setup.removeDirectory() }
            let (master, n1, n2) = (setup.master, setup.n1, setup.n2)
            // A fake n2: reports position zero, reads one replicate frame, then closes without acknowledging.
            let connections = Mutex(0)
            let fake = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: Self.cid, localID: "n2",
                                                  acceptedRoles: [.node], logger: testLogger)
            let fakeTask = Task {
                await fake.run { (conn, reader) async throws(CatenaError) in
                    connections.withLock { $0 += 1 }
                    let epoch = await master.configuration.epoch
                    try? await conn.outbound.write(Frame(type: .position, chainID: 1, epoch: epoch, payload: LSNPayload.encode(.zero)))
                    _ = try await reader.next()
                }
            }
            let reg = try await RequestConnection.connect(to: master.address, hello: Hello(role: .node, clusterID: Self.cid, senderID: "n2"))
            _ = try await reg.request(Frame(type: .heartbeat, payload: Heartbeat(node: n2, address: "127.0.0.1:\(fake.port)", highestLSN: .zero).encoded()),
                                      timeout: .seconds(2))
            reg.close()
            let node = try await Node.start(setup.node(n1), logger: testLogger)
            let nodeTask = Task { await node.run() }
            try await Self.waitConverged(master, [node])
            while connections.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(10)) }
            try await Task.sleep(for: .milliseconds(200))
            let before = connections.withLock { $0 }

            let client = try await RequestConnection.connect(to: node.address, hello: Hello(role: .client, clusterID: Self.cid, senderID: "t"))
            let request = WriteRequest(requestID: RequestID(high: 1, low: 1), type: .put, key: try Key("k"), value: [1, 2, 3])
            let writeTask = Task { try? await client.request(Frame(type: .write, chainID: 1, payload: WritePayload.encode(request)), timeout: .seconds(20)) }
            let deadline = ContinuousClock.now + .seconds(3)
            while connections.withLock({ $0 }) <= before && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            let after = connections.withLock { $0 }
            #expect(after > before, "the head never reconnected to its successor; the write cannot commit")

            client.close()
            writeTask.cancel()
            nodeTask.cancel(); await nodeTask.value
            fake.close(); fakeTask.cancel(); await fakeTask.value
            await setup.stopMaster()
        }

        @Test("a restarted head whose log lacks a record its successor holds takes no writes instead of reusing the LSN", .timeLimit(.minutes(2)))
        func headRestartReusesLSN() async throws {
            let setup = try await TwoNodeSetup.start()
            defer { setup.removeDirectory() }
            let (dir, master, n1, n2) = (setup.dir, setup.master, setup.n1, setup.n2)
            // A fixed port for the head, as in topology/local.yaml: its restarts do not change its address.
            let probe = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: Self.cid, localID: "p", acceptedRoles: [.node], logger: testLogger)
            let headPort = UInt16(probe.port)
            probe.close()
            var head = try await Node.start(setup.node(n1, port: headPort), logger: testLogger)
            var headTask = Task { [head] in await head.run() }
            let tail = try await Node.start(setup.node(n2), logger: testLogger)
            let tailTask = Task { await tail.run() }
            try await Self.waitConverged(master, [head, tail])
            var cc = CatenaClient.Configuration()
            cc.clusterID = Self.cid
            cc.requestTimeout = .seconds(3)
            let client = try await CatenaClient(masters: [master.address.description], configuration: cc, logger: testLogger)
            try await client.put("k", Array("v0".utf8))

            // Stop the head and keep a copy of its log: the copy stands for "the head crashed
            // after forwarding its last record but before that record reached its disk".
            headTask.cancel(); await headTask.value
            try FileManager.default.copyItem(atPath: dir + "/n1", toPath: dir + "/n1-snapshot")
            head = try await Node.start(setup.node(n1, port: headPort), logger: testLogger)
            headTask = Task { [head] in await head.run() }
            try await Self.waitConverged(master, [head, tail])
            let old = try await client.put("k", Array("old".utf8))

            headTask.cancel(); await headTask.value
            try FileManager.default.removeItem(atPath: dir + "/n1")
            try FileManager.default.moveItem(atPath: dir + "/n1-snapshot", toPath: dir + "/n1")
            head = try await Node.start(setup.node(n1, port: headPort), logger: testLogger)
            headTask = Task { [head] in await head.run() }
            try await Self.waitConverged(master, [head, tail])

            // The restarted head's log ends before a record its successor holds: it must take no
            // write at all rather than hand out that LSN again.
            await #expect(throws: CatenaError.self) { try await client.put("k", Array("new".utf8)) }
            #expect(String(decoding: try await client.get("k").bytes, as: UTF8.self) == "old")
            #expect(try tail.localStore.head(try Key("k"))?.lsn == old.lsn)

            await client.close()
            headTask.cancel(); await headTask.value
            tailTask.cancel(); await tailTask.value
            await setup.stopMaster()
        }

        @Test("a retry after a head restart is not applied twice", .timeLimit(.minutes(2)))
        func retryAfterHeadRestart() async throws {
            let setup = try await TwoNodeSetup.start()
            defer { setup.removeDirectory() }
            let (master, n1, n2) = (setup.master, setup.n1, setup.n2)
            var head = try await Node.start(setup.node(n1), logger: testLogger)
            var headTask = Task { [head] in await head.run() }
            let tail = try await Node.start(setup.node(n2), logger: testLogger)
            let tailTask = Task { await tail.run() }
            try await Self.waitConverged(master, [head, tail])
            let request = WriteRequest(requestID: RequestID(high: 7, low: 7), type: .put, key: try Key("k"), value: [1])
            // As a client does: retry while the head is not ready (it waits for its successor's position).
            func send(_ r: WriteRequest) async throws -> LSN {
                let c = try await RequestConnection.connect(to: head.address, hello: Hello(role: .client, clusterID: Self.cid, senderID: "t"))
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
            headTask.cancel(); await headTask.value
            head = try await Node.start(setup.node(n1), logger: testLogger)
            headTask = Task { [head] in await head.run() }
            try await Self.waitConverged(master, [head, tail])
            let afterRestart = try await send(request)
            #expect(again == first)
            #expect(afterRestart == first)
            #expect(try head.localStore.head(try Key("k"))?.lsn == first)
            headTask.cancel(); await headTask.value
            tailTask.cancel(); await tailTask.value
            await setup.stopMaster()
        }
    

        @Test("a write without a request id is refused (it could not be told from another one)", .timeLimit(.minutes(1)))
        func noneRequestIDs() async throws {
            try await withCluster(nodes: 2) { cluster in
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
