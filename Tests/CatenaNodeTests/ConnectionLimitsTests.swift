import CatenaClient
import CatenaClusterTestSupport
import CatenaCore
import CatenaNetwork
import CatenaNode
import CatenaStorage
import CatenaTestSupport
import CatenaWire
import Foundation
import NIOCore
import Synchronization
import Testing

// MARK: - The admission rules, without a network

@Suite("Request admission rules")
struct RequestAdmissionTests {
    typealias State = RequestAdmissionState
    static let limits = State.Limits(perConnection: 100, perServer: 150, allowance: 10)

    @Test("a connection holds at most its limit; a larger frame comes alone; releasing wakes it")
    func perConnection() {
        var s = State(limits: Self.limits)
        s.open(1)
        #expect(s.admit(1, bytes: 60) == .admitted)
        #expect(s.admit(1, bytes: 40) == .admitted)
        #expect(s.admit(1, bytes: 1) == .waiting)
        #expect(s.admit(1, bytes: 1) == .waiting, "asking again while it waits")
        #expect(s.release(1, bytes: 40, delivered: false) == [1])
        #expect(s.admit(1, bytes: 1) == .admitted, "woken: the frame was admitted")
        #expect(s.held(by: 1) == 61)
        _ = s.release(1, bytes: 61, delivered: false)
        #expect(s.admit(1, bytes: 140) == .admitted, "over the limit, alone")
        #expect(s.admit(1, bytes: 1) == .waiting)
        #expect(s.waits == 2)
    }

    @Test("the server's budget is shared first come first served; each connection's allowance is outside it")
    func perServer() {
        var s = State(limits: Self.limits)
        for id: UInt64 in 1...4 { s.open(id) }
        #expect(s.admit(1, bytes: 90) == .admitted)  // 80 charged to the server
        #expect(s.admit(2, bytes: 80) == .admitted)  // 70: 150
        #expect(s.serverBytes == 150)
        #expect(s.admit(3, bytes: 50) == .waiting)   // 40 more: no room
        #expect(s.admit(4, bytes: 5) == .admitted, "within its allowance: never waits for others")
        #expect(s.admit(1, bytes: 5) == .waiting, "behind connection 3")
        #expect(s.heldBytes == 175)
        // 70 released: connection 3 (40) goes first, then connection 1 (5).
        #expect(s.release(2, bytes: 80, delivered: false) == [3, 1])
        #expect(s.admit(3, bytes: 50) == .admitted)
        #expect(s.admit(1, bytes: 5) == .admitted)
        #expect(s.serverBytes == 80 + 5 + 40)
        #expect(s.peakServerBytes == 150)
    }

    @Test("a closed connection gives back what its handler never got at once, the rest as its requests end")
    func close() {
        var s = State(limits: Self.limits)
        s.open(1)
        s.open(2)
        #expect(s.admit(1, bytes: 80) == .admitted)
        #expect(s.admit(1, bytes: 20) == .admitted)
        s.deliver(1, bytes: 80)
        #expect(s.admit(2, bytes: 100) == .waiting)
        // The 20 undelivered bytes come back; the 80 in progress stay until answered.
        #expect(s.close(1) == [])
        #expect(s.held(by: 1) == 80)
        #expect(s.release(1, bytes: 80, delivered: true) == [2])
        #expect(s.heldBytes == 100)
        #expect(s.held(by: 1) == 0)
        #expect(s.admit(1, bytes: 5) == .admitted, "a closed connection's late frames are not counted")
        #expect(s.close(2) == [])
        #expect(s.heldBytes == 0 && s.serverBytes == 0)
    }

    @Test("seeded schedules: the books balance, the bounds hold, and every frame gets in once everything is released",
          arguments: 0..<20)
    func randomSchedules(_ seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let limits = State.Limits(perConnection: 200, perServer: 500, allowance: 20)
        var s = State(limits: limits)
        let ids = (1...6).map { UInt64($0) }
        for id in ids { s.open(id) }
        var held: [UInt64: [Int]] = [:]      // admitted, undelivered
        var delivered: [UInt64: [Int]] = [:]
        var waiting: [UInt64: Int] = [:]
        var closed = Set<UInt64>()
        // What a gate does when woken: asks again for its frame, which is now admitted.
        func wake(_ ids: [UInt64]) {
            for id in ids {
                guard let bytes = waiting[id] else {
                    Issue.record("woke connection \(id), which was not waiting")
                    continue
                }
                #expect(s.admit(id, bytes: bytes) == .admitted)
                held[id, default: []].append(bytes)
                waiting[id] = nil
            }
        }
        for _ in 0..<2000 {
            let id = ids[Int(rng.next() % 6)]
            switch rng.next() % 4 {
            case 0 where !closed.contains(id):
                if let bytes = waiting[id] {
                    #expect(s.admit(id, bytes: bytes) == .waiting, "asked again before it was woken")
                } else {
                    let bytes = Int(1 + rng.next() % 250)
                    if s.admit(id, bytes: bytes) == .admitted {
                        held[id, default: []].append(bytes)
                    } else {
                        waiting[id] = bytes
                    }
                }
            case 1:
                if let b = held[id]?.popLast() {
                    s.deliver(id, bytes: b)
                    delivered[id, default: []].append(b)
                }
            case 2:
                if let b = delivered[id]?.popLast() { wake(s.release(id, bytes: b, delivered: true)) }
            default:
                if rng.next() % 20 == 0 && !closed.contains(id) {
                    closed.insert(id)
                    held[id] = []
                    waiting[id] = nil
                    wake(s.close(id))
                }
            }
            let total = ids.reduce(0) { $0 + (held[$1] ?? []).reduce(0, +) + (delivered[$1] ?? []).reduce(0, +) }
            #expect(s.heldBytes == total)
            #expect(s.serverBytes >= 0 && s.serverBytes <= max(limits.perServer, 250))
            for id in ids {
                let mine = (held[id] ?? []).reduce(0, +) + (delivered[id] ?? []).reduce(0, +)
                #expect(mine <= max(limits.perConnection, 250))
            }
        }
        // Everything released: every waiting frame is admitted, in turn.
        for id in ids {
            while let b = delivered[id]?.popLast() { wake(s.release(id, bytes: b, delivered: true)) }
            while let b = held[id]?.popLast() { wake(s.release(id, bytes: b, delivered: false)) }
            while let b = delivered[id]?.popLast() { wake(s.release(id, bytes: b, delivered: true)) }
        }
        #expect(waiting.isEmpty, "left waiting: \(waiting)")
    }
}

// MARK: - A frame server's limits, over raw sockets

/// A ``FrameServer`` on 127.0.0.1 whose handler answers every request with a pong — a client's
/// only once the test lets it (``releaseHeld()``), so requests stay in progress.
final class TestFrameServer: Sendable {
    let server: FrameServer
    private let task: Task<Void, Never>
    private let gate = Mutex<[CheckedContinuation<Void, Never>]>([])
    private let holding = Atomic<Bool>(false)

    private init(server: FrameServer, task: Task<Void, Never>) {
        self.server = server
        self.task = task
    }

    var port: Int { server.port }

    static func start(limits: ConnectionLimits) async throws -> TestFrameServer {
        let server = try await FrameServer.bind(host: "127.0.0.1", port: 0, clusterID: TestCluster.clusterID, localID: "server",
                                                acceptedRoles: [.client, .node], limits: limits, logger: testLogger)
        let box = Mutex<TestFrameServer?>(nil)
        let task = Task {
            await server.run { (connection, reader) async throws(CatenaError) in
                guard let me = box.withLock({ $0 }) else { return }
                try await me.serve(connection, &reader)
            }
        }
        let me = TestFrameServer(server: server, task: task)
        box.withLock { $0 = me }
        return me
    }

    /// Holds every client request (other than pings) from now until ``releaseHeld()``.
    func hold() { holding.store(true, ordering: .sequentiallyConsistent) }

    /// Answers every held request, and those that come later.
    func releaseHeld() {
        holding.store(false, ordering: .sequentiallyConsistent)
        for c in gate.withLock({ g in defer { g = [] }; return g }) { c.resume() }
    }

    func stop() async {
        releaseHeld()
        server.close()
        task.cancel()
        await task.value
    }

    private func serve(_ connection: ServerConnection, _ reader: inout FrameReader) async throws(CatenaError) {
        if connection.peer.role == .node {
            while let frame = try await reader.next() {
                try? await connection.outbound.write(Frame(type: .pong, flags: .reply, requestID: frame.requestID))
            }
            return
        }
        await withTaskGroup(of: Void.self) { group in
            while let frame = try? await reader.nextHeld() {
                group.addTask {
                    if frame.type != .ping {
                        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                            let held = self.gate.withLock { g in
                                guard self.holding.load(ordering: .sequentiallyConsistent) else { return false }
                                g.append(c)
                                return true
                            }
                            if !held { c.resume() }
                        }
                    }
                    try? await connection.outbound.write(Frame(type: .pong, flags: .reply, requestID: frame.requestID))
                    connection.release(frame)
                }
            }
        }
    }
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes.
func waitUntil(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        do { try await Task.sleep(for: .milliseconds(5)) } catch { break }  // cancelled: no spinning
    }
    return try await condition()
}

extension InProcessChainTests {
    @Suite("Connection limits of a frame server")
    struct FrameServerLimits {
        @Test("beyond maxConnections a client gets busy and is closed; established ones go on; peers use the reserve",
              .timeLimit(.minutes(1)))
        func connectionCap() async throws {
            var limits = ConnectionLimits()
            limits.maxConnections = 3
            limits.reservedPeerConnections = 1
            let server = try await TestFrameServer.start(limits: limits)
            do {
                var clients: [RawClient] = []
                for i in 0..<3 {
                    let c = try RawClient(port: server.port)
                    try await c.hello(name: "c\(i)")
                    #expect(c.welcomed, "c\(i): \(c.frames)")
                    clients.append(c)
                }
                let fourth = try RawClient(port: server.port)
                try await fourth.hello(name: "c3")
                try await fourth.pump(until: \.closed)
                #expect(fourth.errorCodes == [.busy] && fourth.closed, "\(fourth.frames)")
                // The refused connection's slot is free once the server has closed its side (the client may
                // see the close first).
                #expect(await waitUntil { server.server.metrics.openConnections == 3 })

                // A node still gets in (the reserve); a second one finds every slot taken, before its hello.
                let peer = try RawClient(port: server.port)
                try await peer.hello(role: .node, name: "n1")
                #expect(peer.welcomed)
                #expect(try await peer.ping(id: 1))
                let secondPeer = try RawClient(port: server.port)
                try await secondPeer.pump(until: \.closed)
                #expect(secondPeer.errorCodes == [.busy] && secondPeer.closed, "\(secondPeer.frames)")

                for (i, c) in clients.enumerated() {
                    #expect(try await c.ping(id: UInt64(10 + i)), "established client c\(i) still served")
                }
                #expect(server.server.metrics.clientConnections == 3)
                #expect(server.server.metrics.refusedConnections == 2)

                // A slot freed is a slot for the next client.
                clients[0].close()
                #expect(await waitUntil { server.server.metrics.clientConnections == 2 })
                let next = try RawClient(port: server.port)
                try await next.hello(name: "c4")
                #expect(next.welcomed, "\(next.frames)")
                #expect(try await next.ping(id: 20))
            } catch {
                await server.stop()  // a test that throws stops its server too
                throw error
            }
            await server.stop()
        }

        @Test("a client that passes no frame for the idle timeout gets timeout and is closed; pinging clients and idle peers stay",
              .timeLimit(.minutes(1)))
        func idleTimeout() async throws {
            var limits = ConnectionLimits()
            limits.idleTimeout = .seconds(2)
            let server = try await TestFrameServer.start(limits: limits)
            do {
                let idle = try RawClient(port: server.port)
                try await idle.hello(name: "idle")
                let busy = try RawClient(port: server.port)
                try await busy.hello(name: "busy")
                let peer = try RawClient(port: server.port)
                try await peer.hello(role: .node, name: "n1")
                #expect(idle.welcomed && busy.welcomed && peer.welcomed)
                // Five seconds: the busy client pings every 100 ms, the others say nothing.
                let end = ContinuousClock.now + .seconds(5)
                var id: UInt64 = 100
                while ContinuousClock.now < end {
                    id += 1
                    #expect(try await busy.ping(id: id))
                    idle.pump()
                    peer.pump()
                    try await Task.sleep(for: .milliseconds(100))
                }
                try await idle.pump(until: \.closed)
                #expect(idle.closed && idle.errorCodes == [.timeout], "\(idle.frames)")
                #expect(!busy.closed && busy.errorCodes.isEmpty)
                peer.pump()
                #expect(!peer.closed)
                #expect(try await peer.ping(id: 1), "an idle peer is not closed")
                #expect(server.server.metrics.idleClosedConnections == 1)
            } catch {
                await server.stop()  // a test that throws stops its server too
                throw error
            }
            await server.stop()
        }

        @Test("pipelined large requests: bytes in progress stay within the connection's and the server's budgets; others are served; all are answered",
              .timeLimit(.minutes(1)))
        func requestBudget() async throws {
            var limits = ConnectionLimits()
            limits.maxRequestBytesPerConnection = 1 << 20
            limits.maxRequestBytesInProgress = 2 << 20
            limits.requestBytesAllowance = 64 << 10
            let server = try await TestFrameServer.start(limits: limits)
            server.hold()
            do {
                let payload = ByteBuffer(bytes: [UInt8](repeating: 7, count: 300 << 10))
                let frameSize = Frame(type: .write, payload: payload).encodedSize
                func abuser(_ n: Int) async throws -> RawClient {
                    let c = try RawClient(port: server.port)
                    try await c.hello(name: "abuser\(n)")
                    for i in 0..<20 { c.queue(Frame(type: .write, requestID: UInt64(i + 1), payload: payload)) }
                    return c
                }
                // One connection: three 300 KiB frames fit its 1 MiB, the fourth waits, unread.
                let first = try await abuser(1)
                #expect(try await first.pump(until: { _ in server.server.metrics.admission.bytesInProgress == 3 * frameSize }))
                #expect(await waitUntil { server.server.metrics.admission.waitingConnections == 1 })
                try await Task.sleep(for: .milliseconds(300))
                first.pump()
                #expect(server.server.metrics.admission.bytesInProgress == 3 * frameSize)

                // Two more: they share the server's 2 MiB (beyond 64 KiB per connection) until no
                // further frame fits, and all three wait.
                let others = [try await abuser(2), try await abuser(3)]
                let serverBound = limits.maxRequestBytesInProgress + 3 * limits.requestBytesAllowance
                #expect(await waitUntil {
                    for c in others { c.pump() }
                    return server.server.metrics.admission.waitingConnections == 3
                })
                try await Task.sleep(for: .milliseconds(300))
                for c in others { c.pump() }
                let metrics = server.server.metrics.admission
                #expect(metrics.serverBytesInProgress <= limits.maxRequestBytesInProgress)
                #expect(metrics.serverBytesInProgress + frameSize > limits.maxRequestBytesInProgress, "room was left: \(metrics)")
                #expect(metrics.bytesInProgress % frameSize == 0 && metrics.bytesInProgress > 3 * frameSize, "\(metrics)")
                #expect(metrics.peakBytesInProgress <= serverBound)
                #expect(metrics.peakServerBytesInProgress <= limits.maxRequestBytesInProgress)
                #expect(metrics.waitingConnections == 3)
                testLogger.info("request budget: \(metrics); bytes sent \(([first] + others).map(\.sent))")

                // A bystander's ping is within its allowance: answered at once.
                let bystander = try RawClient(port: server.port)
                try await bystander.hello(name: "bystander")
                #expect(try await bystander.ping(id: 1))

                // A connection that closes with requests in progress: they stay counted until
                // answered (a client closing and reconnecting does not get a fresh budget).
                let before = server.server.metrics.admission.bytesInProgress
                first.close()
                try await Task.sleep(for: .milliseconds(300))
                #expect(server.server.metrics.admission.bytesInProgress == before)

                // Released, every request is answered, and nothing stays in progress.
                server.releaseHeld()
                for c in others {
                    #expect(try await c.pump(until: { $0.frames.filter { $0.type == .pong }.count == 20 }, timeout: .seconds(30)),
                            "\(c.frames.count) frames")
                }
                #expect(await waitUntil { server.server.metrics.admission.bytesInProgress == 0 })
                #expect(server.server.metrics.admission.peakBytesInProgress <= serverBound)
            } catch {
                await server.stop()  // a test that throws stops its server too
                throw error
            }
            await server.stop()
        }
    }
}

// MARK: - A node's limits

extension InProcessChainTests {
    @Suite("Connection limits of a node")
    struct NodeLimits {
        @Test("a node past its connection cap answers busy; its clients and its chain go on", .timeLimit(.minutes(1)))
        func connectionCap() async throws {
            try await withTestCluster(.init(node: { _, configuration in
                configuration.connectionLimits.maxConnections = 4
                configuration.connectionLimits.reservedPeerConnections = 2
            })) { cluster in
                _ = try await cluster.client.put("cap/before", Array("x".utf8))
                let port = Int(cluster.head.address.port)
                var raw: [RawClient] = []
                var refused: RawClient?
                for i in 0..<5 {
                    let c = try RawClient(port: port)
                    try await c.hello(name: "raw\(i)")
                    if c.welcomed {
                        raw.append(c)
                    } else {
                        try await c.pump(until: \.closed)
                        refused = c
                        break
                    }
                }
                // The cluster's client holds one of the four.
                #expect(raw.count == 3)
                #expect(refused?.errorCodes == [.busy] && refused?.closed == true, "\(refused?.frames ?? [])")
                for (i, c) in raw.enumerated() { #expect(try await c.ping(id: UInt64(i + 1))) }
                // Established clients go on; the chain replicates.
                let receipt = try await cluster.client.put("cap/after", Array("y".utf8))
                for node in cluster.nodes { #expect(try node.localStore.head(try Key("cap/after"))?.lsn == receipt.lsn) }
                // A node-role peer still gets in (it is not the head's predecessor: redirect).
                let peer = try RawClient(port: port)
                try await peer.hello(role: .node, name: "n9")
                #expect(peer.welcomed, "\(peer.frames)")
                try await peer.pump(until: \.closed)
                #expect(peer.errorCodes == [.redirect])
                // A freed slot takes the next client.
                raw[0].close()
                #expect(try await waitUntil {
                    let c = try RawClient(port: port)
                    try await c.hello(name: "late")
                    return c.welcomed
                })
            }
        }

        @Test("an idle client connection is closed with timeout; the client library reconnects, and an idle chain still replicates",
              .timeLimit(.minutes(1)))
        func idleTimeout() async throws {
            let idle = Duration.seconds(1)
            try await withTestCluster(.init(node: { _, configuration in
                configuration.connectionLimits.idleTimeout = idle
            })) { cluster in
                _ = try await cluster.client.put("idle/before", Array("x".utf8))
                _ = try await cluster.client.get("idle/before")
                let raw = try RawClient(port: Int(cluster.head.address.port))
                try await raw.hello()
                #expect(raw.welcomed)
                // Nothing is written or read for three timeouts: the replication links and the
                // client's pooled connections are idle too.
                try await raw.pump(until: \.closed, timeout: .seconds(20))
                #expect(raw.closed && raw.errorCodes == [.timeout], "\(raw.frames)")
                try await Task.sleep(for: idle * 2)
                let receipt = try await cluster.client.put("idle/after", Array("y".utf8))
                #expect(try await cluster.client.get("idle/after").info.lsn == receipt.lsn)
                for node in cluster.nodes { #expect(try node.localStore.head(try Key("idle/after"))?.lsn == receipt.lsn) }
            }
        }

        @Test("writes pipelined on raw connections while the chain is stalled: the head takes at most its byte budgets, stops reading, serves others, then commits every write",
              .timeLimit(.minutes(2)))
        func requestBudget() async throws {
            let gated = GatedFileSystem(wrapping: PosixFileSystem())
            let perConnection = 4 << 20
            let perNode = 6 << 20
            try await withTestCluster(.init(nodes: 2, node: { i, configuration in
                guard i == 0 else { return }
                configuration.store.fileSystem = gated
                // One write enqueued at a time: every other write in progress waits in the head's
                // throttle, where the metrics count it.
                configuration.maxUncommittedBytes = 1
                configuration.connectionLimits.maxRequestBytesPerConnection = perConnection
                configuration.connectionLimits.maxRequestBytesInProgress = perNode
            })) { cluster in
                _ = try await cluster.client.put("budget/bystander", Array("readable".utf8))
                let gate = gated.holdNextSync(matching: ".seg")
                defer { gate.open() }
                let head = cluster.head
                let port = Int(head.address.port)
                let value = pseudoRandomBytes(1 << 20, seed: 5)
                let writes = 30
                func abuser(_ n: Int) async throws -> RawClient {
                    let c = try RawClient(port: port)
                    try await c.hello(name: "abuser\(n)")
                    for i in 0..<writes {
                        let request = WriteRequest(requestID: RequestID(high: UInt64(n), low: UInt64(i + 1)), type: .put,
                                                   key: try Key("budget/\(n)/\(i)"), value: value)
                        c.queue(Frame(type: .write, chainID: 1, requestID: UInt64(i + 1), payload: WritePayload.encode(request)))
                    }
                    return c
                }
                /// Writes in progress at the head: the one enqueued and those waiting behind it.
                func inProgress() async -> Int {
                    let m = await head.metrics
                    return m.writesThrottled + (m.uncommittedBytes > 0 ? 1 : 0)
                }
                let frameSize = Frame(type: .write, chainID: 1, payload: WritePayload.encode(
                    WriteRequest(requestID: RequestID(high: 1, low: 1), type: .put, key: try Key("budget/1/10"), value: value))).encodedSize
                let perConnectionWrites = perConnection / frameSize  // 3
                #expect(perConnectionWrites == 3)

                // One connection: three writes in progress, the rest unread.
                let first = try await abuser(1)
                #expect(await waitUntil(timeout: .seconds(30)) {
                    first.pump()
                    return await inProgress() == perConnectionWrites
                })
                #expect(await gate.waitUntilReached(timeout: .seconds(10)))
                try await Task.sleep(for: .milliseconds(500))
                first.pump()
                #expect(await inProgress() == perConnectionWrites)

                // Three connections: six writes in progress, the node's 6 MiB (plus 64 KiB per
                // connection) — whichever connections got them.
                let others = [try await abuser(2), try await abuser(3)]
                #expect(await waitUntil(timeout: .seconds(30)) {
                    for c in others { c.pump() }
                    return await inProgress() == 6
                })
                try await Task.sleep(for: .milliseconds(500))
                for c in others { c.pump() }
                #expect(await inProgress() == 6)
                let sent = ([first] + others).map(\.sent)
                // 30 MiB each: more than socket buffers take once the head stopped reading.
                for c in [first] + others { #expect(c.unsent > 0, "the head read all \(c.sent) bytes") }

                // Others are served meanwhile: a ping at the head, a read at the tail.
                let bystander = try RawClient(port: port)
                try await bystander.hello(name: "bystander")
                #expect(try await bystander.ping(id: 1))
                #expect(try await cluster.client.get("budget/bystander").bytes == Array("readable".utf8))

                // Unstalled, every write commits, on both nodes.
                gate.open()
                for c in [first] + others {
                    #expect(try await c.pump(until: { $0.frames.filter { $0.type == .writeResult }.count == writes }, timeout: .seconds(60)),
                            "\(c.frames.count) replies, errors \(c.errorCodes)")
                    #expect(c.errorCodes.isEmpty)
                }
                for node in cluster.nodes {
                    #expect(try node.localStore.list(prefix: Array("budget/".utf8), limit: 1000).objects.count == 3 * writes + 1)
                }
                testLogger.info("request budget test: bytes sent before the head stopped reading \(sent)")
            }
        }
    }
}
