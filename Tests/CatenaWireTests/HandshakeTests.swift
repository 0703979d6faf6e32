import CatenaCore
import CatenaWire
import NIOCore
import Testing

// MARK: - Helpers

fileprivate func helloFrame(_ hello: Hello, requestID: UInt64 = 1) -> Frame {
    Frame(type: .hello, requestID: requestID, payload: hello.encoded())
}

/// A hello payload built by hand, so that values a `Hello` cannot hold (reversed ranges) can be sent.
fileprivate func rawHelloPayload(min: UInt16, max: UInt16, role: UInt8, cluster: [UInt8], sender: [UInt8], tail: [UInt8] = []) -> ByteBuffer {
    var b = ByteBuffer()
    b.writeInteger(min, endianness: .little)
    b.writeInteger(max, endianness: .little)
    b.writeInteger(role)
    b.writeInteger(UInt16(cluster.count), endianness: .little)
    b.writeBytes(cluster)
    b.writeInteger(UInt16(sender.count), endianness: .little)
    b.writeBytes(sender)
    b.writeBytes(tail)
    return b
}

/// Checks that `action` accepts, answering `request` with a welcome, and returns the decoded welcome.
@discardableResult
fileprivate func expectAccept(_ action: HandshakeStateMachine.Action, answering request: Frame,
                              sourceLocation: SourceLocation = #_sourceLocation) -> (welcome: Welcome, version: UInt16, peer: Hello)? {
    guard case .accept(let reply, let version, let peer) = action else {
        Issue.record("expected .accept, got \(action)", sourceLocation: sourceLocation)
        return nil
    }
    #expect(reply.type == .welcome, sourceLocation: sourceLocation)
    #expect(reply.flags.contains(.reply), sourceLocation: sourceLocation)
    #expect(reply.requestID == request.requestID, sourceLocation: sourceLocation)
    do {
        let welcome = try Welcome(decoding: reply.payload)
        #expect(welcome.version == version, sourceLocation: sourceLocation)
        return (welcome, version, peer)
    } catch {
        Issue.record("welcome does not decode: \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Checks that `action` rejects with `code`, and that the reply is an error frame carrying that code.
@discardableResult
fileprivate func expectReject(_ action: HandshakeStateMachine.Action, _ code: CatenaError.Code, answering request: Frame? = nil,
                              sourceLocation: SourceLocation = #_sourceLocation) -> CatenaError? {
    guard case .reject(let reply, let error) = action else {
        Issue.record("expected .reject(\(code)), got \(action)", sourceLocation: sourceLocation)
        return nil
    }
    #expect(error.code == code, sourceLocation: sourceLocation)
    #expect(reply.type == .error, sourceLocation: sourceLocation)
    #expect(reply.flags.contains(.reply), sourceLocation: sourceLocation)
    if let request { #expect(reply.requestID == request.requestID, sourceLocation: sourceLocation) }
    do {
        let carried = try ErrorPayload.decode(reply.payload)
        #expect(carried == error, "the reply carries the error", sourceLocation: sourceLocation)
        #expect(carried.code == code, sourceLocation: sourceLocation)
        return carried
    } catch {
        Issue.record("error reply does not decode: \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

fileprivate func server(cluster: String = "prod-eu", roles: Set<PeerRole> = [.client, .node, .master],
                        versions: ClosedRange<UInt16> = ProtocolVersion.minimum...ProtocolVersion.current) -> HandshakeStateMachine {
    HandshakeStateMachine(clusterID: cluster, localID: "node-a", acceptedRoles: roles, versions: versions)
}

// MARK: - State machine transcripts

@Suite("Handshake state machine")
struct HandshakeTests {

    @Test("Same cluster, overlapping versions: welcome, then frames are delivered")
    func acceptThenDeliver() throws {
        var machine = HandshakeStateMachine(clusterID: "prod-eu", localID: "node-a", acceptedRoles: [.client, .node], versions: 1...3)
        #expect(machine.version == nil)

        let hello = Hello(versions: 2...5, role: .client, clusterID: "prod-eu", senderID: "cli-7")
        let first = helloFrame(hello, requestID: 41)
        let accepted = expectAccept(machine.received(first), answering: first)
        #expect(accepted?.version == 3, "the highest common version")
        #expect(accepted?.welcome.clusterID == "prod-eu")
        #expect(accepted?.welcome.responderID == "node-a")
        #expect(accepted?.peer == hello)
        #expect(machine.version == 3)

        let ping = Frame(type: .ping, requestID: 42)
        #expect(machine.received(ping) == .deliver(ping))
        let request = Frame(type: FrameType(rawValue: 16), chainID: 9, requestID: 43, epoch: 4, payload: ByteBuffer(string: "put"))
        #expect(machine.received(request) == .deliver(request))
        #expect(machine.version == 3)

        // A second hello on an established connection breaks the protocol.
        guard case .reject(_, let error) = machine.received(helloFrame(hello, requestID: 44)) else {
            Issue.record("a second hello was not refused")
            return
        }
        #expect(error.code == .protocolViolation)
    }

    @Test("Default versions: a current peer is welcomed with the current version")
    func defaultVersions() {
        var machine = server()
        let first = helloFrame(Hello(role: .node, clusterID: "prod-eu", senderID: "node-b"))
        #expect(expectAccept(machine.received(first), answering: first)?.version == ProtocolVersion.current)
    }

    @Test("Another cluster is refused with wrongCluster; then everything is refused")
    func wrongCluster() {
        var machine = server()
        let first = helloFrame(Hello(role: .node, clusterID: "prod-us", senderID: "node-x"), requestID: 5)
        expectReject(machine.received(first), .wrongCluster, answering: first)
        #expect(machine.version == nil)

        // Closed: not even a now-correct hello gets through.
        let retry = helloFrame(Hello(role: .node, clusterID: "prod-eu", senderID: "node-x"), requestID: 6)
        expectReject(machine.received(retry), .protocolViolation, answering: retry)
        expectReject(machine.received(Frame(type: .ping, requestID: 7)), .protocolViolation)
        #expect(machine.version == nil)
    }

    @Test("The first frame must be a hello", arguments: [FrameType.ping, .welcome, .error, .pong, FrameType(rawValue: 16)])
    func firstFrameNotHello(_ type: FrameType) {
        var machine = server()
        let first = Frame(type: type, requestID: 3, payload: Hello(role: .client, clusterID: "prod-eu", senderID: "c").encoded())
        expectReject(machine.received(first), .protocolViolation, answering: first)
        let hello = helloFrame(Hello(role: .client, clusterID: "prod-eu", senderID: "c"))
        expectReject(machine.received(hello), .protocolViolation)
    }

    @Test("A malformed hello payload is refused with malformed")
    func malformedHello() {
        let full = Hello(role: .client, clusterID: "prod-eu", senderID: "cli").encoded()
        // Every prefix of a hello without extensions is truncated.
        for n in 0..<full.readableBytes {
            var machine = server()
            let frame = Frame(type: .hello, payload: full.getSlice(at: 0, length: n)!)
            expectReject(machine.received(frame), .malformed)
        }
        // A cluster id that is not UTF-8.
        var machine = server()
        let badUTF8 = Frame(type: .hello, payload: rawHelloPayload(min: 1, max: 1, role: 1, cluster: [0xFF, 0xFE], sender: [0x61]))
        expectReject(machine.received(badUTF8), .malformed)
        // A truncated extension area.
        var machine2 = server()
        let badExt = Frame(type: .hello, payload: rawHelloPayload(min: 1, max: 1, role: 1, cluster: Array("prod-eu".utf8), sender: [0x61], tail: [1, 0, 0]))
        expectReject(machine2.received(badExt), .malformed)
    }

    @Test("A hello with reversed versions (min > max on the wire) is refused, not a trap")
    func reversedVersions() {
        var machine = server()
        let frame = Frame(type: .hello, requestID: 8,
                          payload: rawHelloPayload(min: 3, max: 1, role: 1, cluster: Array("prod-eu".utf8), sender: Array("c".utf8)))
        expectReject(machine.received(frame), .malformed, answering: frame)
        #expect(throws: CatenaError.self) { try Hello(decoding: frame.payload) }
    }

    @Test("A role the server does not accept is refused", arguments: [PeerRole.client, PeerRole(rawValue: 9), PeerRole(rawValue: 0)])
    func roleNotAccepted(_ role: PeerRole) {
        var machine = server(roles: [.node, .master])
        let first = helloFrame(Hello(role: role, clusterID: "prod-eu", senderID: "x"))
        expectReject(machine.received(first), .protocolViolation, answering: first)
    }

    @Test("Disjoint versions are refused with protocolVersionUnsupported",
          arguments: [(UInt16(2)...3, UInt16(1)...1), (1...1, 2...3), (5...9, 1...4), (0...0, 1...UInt16.max)])
    func disjointVersions(peer: ClosedRange<UInt16>, local: ClosedRange<UInt16>) {
        var machine = server(versions: local)
        let first = helloFrame(Hello(versions: peer, role: .client, clusterID: "prod-eu", senderID: "x"))
        expectReject(machine.received(first), .protocolVersionUnsupported, answering: first)
        #expect(machine.version == nil)
    }

    @Test("Overlapping versions choose the highest common one",
          arguments: [(UInt16(1)...1, UInt16(1)...1, UInt16(1)), (1...5, 3...9, 5), (4...4, 1...9, 4), (0...UInt16.max, 2...7, 7)])
    func highestCommonVersion(peer: ClosedRange<UInt16>, local: ClosedRange<UInt16>, expected: UInt16) {
        var machine = server(versions: local)
        let first = helloFrame(Hello(versions: peer, role: .client, clusterID: "prod-eu", senderID: "x"))
        #expect(expectAccept(machine.received(first), answering: first)?.version == expected)
        #expect(machine.version == expected)
    }

    @Test("A decoding failure is answered with that error, and the connection is closed",
          arguments: [CatenaError(.frameTooLarge, "frame of 99999999 bytes"), CatenaError(.checksumMismatch, "frame checksum mismatch"),
                      CatenaError(.malformed, "bad magic")])
    func decodingFailed(_ failure: CatenaError) {
        var machine = server()
        let carried = expectReject(machine.decodingFailed(failure), failure.code)
        #expect(carried?.message == failure.message)
        let hello = helloFrame(Hello(role: .client, clusterID: "prod-eu", senderID: "c"))
        expectReject(machine.received(hello), .protocolViolation)
    }

    @Test("A decoding failure after the handshake also closes the connection")
    func decodingFailedWhenEstablished() {
        var machine = server()
        let hello = helloFrame(Hello(role: .client, clusterID: "prod-eu", senderID: "c"))
        expectAccept(machine.received(hello), answering: hello)
        expectReject(machine.decodingFailed(CatenaError(.checksumMismatch, "x")), .checksumMismatch)
        expectReject(machine.received(Frame(type: .ping)), .protocolViolation)
        #expect(machine.version == nil)
    }

    @Test("Cluster ids compare byte for byte: NFC and NFD 'café' are different clusters")
    func clusterIDsAreBytes() {
        let nfc = "caf\u{E9}"
        let nfd = "cafe\u{301}"
        #expect(nfc == nfd, "Swift's String equality is canonical equivalence")
        #expect(Array(nfc.utf8) != Array(nfd.utf8))

        for (local, remote) in [(nfc, nfd), (nfd, nfc)] {
            var machine = server(cluster: local)
            let first = helloFrame(Hello(role: .node, clusterID: remote, senderID: "n"))
            expectReject(machine.received(first), .wrongCluster, answering: first)
        }
        for id in [nfc, nfd] {
            var machine = server(cluster: id)
            let first = helloFrame(Hello(role: .node, clusterID: id, senderID: "n"))
            let accepted = expectAccept(machine.received(first), answering: first)
            #expect(accepted.map { Array($0.welcome.clusterID.utf8) } == Array(id.utf8))
        }
    }

    // MARK: Payload round trips

    @Test("Hello round trip, unknown extension fields kept")
    func helloRoundTrip() throws {
        let extensions = [
            RecordExtension(tag: 0x7F01, mustUnderstand: false, value: [1, 2, 3]),
            RecordExtension(tag: 0x7F02, mustUnderstand: false, value: []),
            RecordExtension(tag: 0x7F03, mustUnderstand: false, value: Array(repeating: 0xAB, count: 300)),
        ]
        for hello in [
            Hello(role: .client, clusterID: "prod-eu", senderID: "cli-1"),
            Hello(versions: 3...65535, role: .master, clusterID: "", senderID: "", extensions: extensions),
            Hello(versions: 0...0, role: PeerRole(rawValue: 200), clusterID: "cafe\u{301} 🚂", senderID: "nœud-b", extensions: extensions),
        ] {
            let decoded = try Hello(decoding: hello.encoded())
            #expect(decoded == hello)
            #expect(Array(decoded.clusterID.utf8) == Array(hello.clusterID.utf8))
            #expect(Array(decoded.senderID.utf8) == Array(hello.senderID.utf8))
            #expect(decoded.extensions == hello.extensions)
            #expect(decoded.encoded() == hello.encoded())
        }
    }

    @Test("A hello written by a later build: unknown may-skip fields after the known ones are kept")
    func helloFromLaterBuild() throws {
        let tail = EncodedRecord.encodeExtensions([RecordExtension(tag: 0x4242, mustUnderstand: false, value: Array("zone=b".utf8))])
        let payload = rawHelloPayload(min: 1, max: 7, role: 2, cluster: Array("prod-eu".utf8), sender: Array("node-z".utf8), tail: tail)
        let hello = try Hello(decoding: payload)
        #expect(hello.versions == 1...7)
        #expect(hello.extensions == [RecordExtension(tag: 0x4242, mustUnderstand: false, value: Array("zone=b".utf8))])
        #expect(hello.encoded() == payload)

        var machine = server()
        let frame = Frame(type: .hello, payload: payload)
        let accepted = expectAccept(machine.received(frame), answering: frame)
        #expect(accepted?.version == 1)
        #expect(accepted?.peer.extensions == hello.extensions)
    }

    @Test("A hello with an unknown must-understand field is refused, not silently accepted")
    func helloWithUnknownMustUnderstandField() {
        // Hello's tagged fields are "in the record extension format", whose rule (RecordExtension) is that a
        // reader refuses a must-understand field it does not know. A newer peer that marks a field
        // must-understand relies on an older node refusing rather than ignoring it.
        let tail = EncodedRecord.encodeExtensions([RecordExtension(tag: 0x4243, mustUnderstand: true, value: [1])])
        let frame = Frame(type: .hello, requestID: 12,
                          payload: rawHelloPayload(min: 1, max: 1, role: 1, cluster: Array("prod-eu".utf8), sender: Array("c".utf8), tail: tail))
        var machine = server()
        expectReject(machine.received(frame), .unknownMustUnderstandField, answering: frame)
    }

    @Test("Welcome round trip, unknown extension fields kept")
    func welcomeRoundTrip() throws {
        for welcome in [
            Welcome(version: 1, clusterID: "prod-eu", responderID: "node-a"),
            Welcome(version: 65535, clusterID: "caf\u{E9}", responderID: "",
                    extensions: [RecordExtension(tag: 9000, mustUnderstand: false, value: [0, 0, 7])]),
        ] {
            let decoded = try Welcome(decoding: welcome.encoded())
            #expect(decoded == welcome)
            #expect(Array(decoded.clusterID.utf8) == Array(welcome.clusterID.utf8))
            #expect(decoded.encoded() == welcome.encoded())
        }
        let full = Welcome(version: 1, clusterID: "prod-eu", responderID: "node-a").encoded()
        for n in 0..<full.readableBytes {
            #expect(throws: CatenaError.self) { try Welcome(decoding: full.getSlice(at: 0, length: n)!) }
        }
    }

    @Test("ErrorPayload round trip, including codes this build does not know")
    func errorPayloadRoundTrip() throws {
        let errors = [
            CatenaError(.wrongCluster, "this is cluster 'a', not 'b'"),
            CatenaError(.protocolVersionUnsupported, ""),
            CatenaError(.named("fromTheFuture"), "a newer peer's code – with ünïcödé"),
        ]
        for error in errors {
            let decoded = try ErrorPayload.decode(ErrorPayload.encode(error))
            #expect(decoded == error)
            #expect(decoded.code.description == error.code.description)
        }
        let future = try ErrorPayload.decode(ErrorPayload.encode(CatenaError(.named("fromTheFuture"), "x")))
        #expect(future.code == .named("fromTheFuture"))
        #expect(future.code != .malformed)
        #expect(try ErrorPayload.decode(ErrorPayload.encode(CatenaError(.malformed, "m"))).code == .malformed)

        // Truncated error payloads are malformed, never a crash.
        let full = ErrorPayload.encode(errors[0])
        for n in 0..<full.readableBytes {
            let error = #expect(throws: CatenaError.self) { try ErrorPayload.decode(full.getSlice(at: 0, length: n)!) }
            #expect(error?.code == .malformed)
        }
    }

    @Test("A huge error message is cut to 64 KiB without breaking the payload")
    func longErrorMessage() throws {
        let message = String(repeating: "é", count: 40_000) // 80,000 UTF-8 bytes
        let decoded = try ErrorPayload.decode(ErrorPayload.encode(CatenaError(.corruption, message)))
        #expect(decoded.code == .corruption)
        #expect(decoded.message.utf8.count <= (64 << 10) + 3)
        #expect(message.hasPrefix(String(decoded.message.dropLast())))
    }
}
