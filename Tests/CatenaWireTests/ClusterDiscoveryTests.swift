import CatenaCore
import CatenaWire
import NIOCore
import Testing

// MARK: - Helpers

private func discoveryHello(_ role: PeerRole, cluster: String = "", versions: ClosedRange<UInt16> = ProtocolVersion.minimum...ProtocolVersion.current,
                            requestID: UInt64 = 21) -> Frame {
    Frame(type: .hello, requestID: requestID,
          payload: Hello(versions: versions, role: role, clusterID: cluster, senderID: "cli-9").encoded())
}

/// The master's machine: cluster "prod-eu", every role, discovery as given.
private func master(discovery: Bool, roles: Set<PeerRole> = [.client, .node, .master]) -> HandshakeStateMachine {
    HandshakeStateMachine(clusterID: "prod-eu", localID: "master", acceptedRoles: roles, allowsClusterDiscovery: discovery)
}

/// The welcome `action` sends, if it accepts `request`.
private func welcome(_ action: HandshakeStateMachine.Action, answering request: Frame,
                     sourceLocation: SourceLocation = #_sourceLocation) -> (welcome: Welcome, peer: Hello)? {
    guard case .accept(let reply, let version, let peer) = action else {
        Issue.record("expected .accept, got \(action)", sourceLocation: sourceLocation)
        return nil
    }
    #expect(reply.type == .welcome && reply.flags.contains(.reply) && reply.requestID == request.requestID, sourceLocation: sourceLocation)
    guard let welcome = try? Welcome(decoding: reply.payload) else {
        Issue.record("the welcome does not decode", sourceLocation: sourceLocation)
        return nil
    }
    #expect(welcome.version == version, sourceLocation: sourceLocation)
    return (welcome, peer)
}

/// The code `action` refuses with, after checking that the error frame it sends carries it.
private func refusal(_ action: HandshakeStateMachine.Action, sourceLocation: SourceLocation = #_sourceLocation) -> CatenaError.Code? {
    guard case .reject(let reply, let error) = action else { return nil }
    #expect(reply.type == .error, sourceLocation: sourceLocation)
    #expect((try? ErrorPayload.decode(reply.payload)) == error, "the error frame carries the error", sourceLocation: sourceLocation)
    return error.code
}

// MARK: - Tests

@Suite("Handshake cluster discovery")
struct ClusterDiscoveryTests {

    @Test("With discovery, a client with an empty cluster id is welcomed and learns the real cluster id")
    func clientDiscovers() {
        var machine = master(discovery: true)
        let hello = discoveryHello(.client)
        guard let accepted = welcome(machine.received(hello), answering: hello) else { return }
        #expect(Array(accepted.welcome.clusterID.utf8) == Array("prod-eu".utf8))
        #expect(accepted.welcome.responderID == "master")
        #expect(accepted.welcome.version == ProtocolVersion.current)
        #expect(accepted.peer.clusterID.isEmpty, "the peer's hello is passed on as it was")
        #expect(accepted.peer.role == .client)
        #expect(machine.version == ProtocolVersion.current)

        // Established: requests are delivered, a second hello is a violation.
        let request = Frame(type: .getConfiguration, requestID: 22)
        #expect(machine.received(request) == .deliver(request))
        #expect(refusal(machine.received(discoveryHello(.client, cluster: "prod-eu", requestID: 23))) == .protocolViolation)
    }

    @Test("Discovery is for clients only: another role with an empty cluster id is refused with wrongCluster",
          arguments: [PeerRole.node, .master, PeerRole(rawValue: 0), PeerRole(rawValue: 9)])
    func otherRolesDoNotDiscover(_ role: PeerRole) {
        var machine = master(discovery: true, roles: [.client, .node, .master, PeerRole(rawValue: 0), PeerRole(rawValue: 9)])
        #expect(refusal(machine.received(discoveryHello(role))) == .wrongCluster)
        #expect(machine.version == nil)
        // Closed: not even a hello naming the right cluster gets through now.
        #expect(refusal(machine.received(discoveryHello(role, cluster: "prod-eu"))) == .protocolViolation)
    }

    @Test("Without discovery, an empty cluster id is refused with wrongCluster, whatever the role",
          arguments: [PeerRole.client, .node, .master])
    func noDiscovery(_ role: PeerRole) {
        var explicit = master(discovery: false)
        #expect(refusal(explicit.received(discoveryHello(role))) == .wrongCluster)
        // The default is no discovery.
        var byDefault = HandshakeStateMachine(clusterID: "prod-eu", localID: "node-a", acceptedRoles: [.client, .node, .master])
        #expect(refusal(byDefault.received(discoveryHello(role))) == .wrongCluster)
        #expect(explicit.version == nil && byDefault.version == nil)
    }

    @Test("Discovery admits no other cluster: a client naming one is refused with wrongCluster",
          arguments: ["prod-us", " ", "prod-eu ", "PROD-EU", "\u{0}"])
    func wrongClusterStillRefused(_ cluster: String) {
        var machine = master(discovery: true)
        #expect(refusal(machine.received(discoveryHello(.client, cluster: cluster))) == .wrongCluster)
    }

    @Test("With discovery, a client or node naming the right cluster is welcomed as before", arguments: [PeerRole.client, .node])
    func rightClusterStillWelcomed(_ role: PeerRole) {
        var machine = master(discovery: true)
        let hello = discoveryHello(role, cluster: "prod-eu")
        #expect(welcome(machine.received(hello), answering: hello)?.welcome.clusterID == "prod-eu")
    }

    @Test("A discovering client still needs an accepted role and a common version")
    func otherChecksStillApply() {
        var clientsNotAccepted = master(discovery: true, roles: [.node, .master])
        #expect(refusal(clientsNotAccepted.received(discoveryHello(.client))) == .protocolViolation)

        var tooNew = master(discovery: true)
        #expect(refusal(tooNew.received(discoveryHello(.client, versions: (ProtocolVersion.current + 1)...(ProtocolVersion.current + 5))))
                == .protocolVersionUnsupported)
    }
}
