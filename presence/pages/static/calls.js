/* presence pages: browser calls ("Call (PC)") with WebRTC.  No framework.
 *
 * presence.js creates one caller of this file's window.PresenceCalls(ctx) per
 * live page and hands it every "msg call ..." frame of the heartbeat:
 *
 *   msg call offer <caller> <id>        + SDP     an incoming call: Accept / Decline
 *   msg call ringing <callee> <id>                our call rings there
 *   msg call answer <callee> <id>       + SDP     our call was accepted
 *   msg call ice <peer> <id>            + JSON    a candidate of the other side
 *   msg call end <peer> <id> <reason>             over: hangup, cancelled, declined,
 *                                                 busy, noanswer, offline, elsewhere
 *
 * and the page answers with POST /api/call (action=offer|answer|ice|hangup|
 * decline).  ICE servers come from GET /api/turn: short-lived credentials of
 * the server's TURN relay (coturn), or none.  docs/calls.md, "Browser calls".
 *
 * The call panel (<section id="call" data-state="idle|calling|ringing|
 * incoming|connecting|active|ended" data-reason=...>) says what happens;
 * all text from others goes in as textContent.
 */
(function () {
  'use strict';

  var REASONS = {
    hangup: function (c) { return c.peer + ' hung up.'; },
    cancelled: function (c) {
      return c.role === 'callee' ? c.peer + ' hung up before you answered.' : 'Call cancelled.';
    },
    declined: function (c) {
      return c.role === 'caller' ? c.peer + ' declined the call.' : 'You declined the call.';
    },
    busy: function (c) { return c.peer + ' is busy: in another call.'; },
    noanswer: function (c) {
      return c.role === 'caller' ? c.peer + ' did not answer.' : 'Missed call from ' + c.peer + '.';
    },
    offline: function (c) {
      if (c.role === 'caller' && c.state === 'calling') {
        return c.peer + ' is not online on a page that can take calls.';
      }
      return c.peer + ' went offline: the call ended.';
    },
    elsewhere: function () { return 'You answered this call on another device.'; }
  };

  window.PresenceCalls = function (ctx) {
    if (!window.RTCPeerConnection || !navigator.mediaDevices) return null;
    var current = null;
    var panel = null;

    function el(tag, cls, text) {
      var e = document.createElement(tag);
      if (cls) e.className = cls;
      if (text !== undefined && text !== null) e.textContent = text;
      return e;
    }

    function makePanel() {
      if (panel) return panel;
      panel = el('section', 'card call-panel');
      panel.id = 'call';
      panel.setAttribute('data-state', 'idle');
      panel.setAttribute('aria-live', 'polite');
      var head = el('h2', '', 'Call');
      var say = el('p', 'call-status', '');
      say.setAttribute('role', 'status');
      var opts = el('label', 'call-video-choice');
      var video = el('input', 'call-video');
      video.type = 'checkbox';
      opts.appendChild(video);
      opts.appendChild(document.createTextNode(' with video'));
      var buttons = el('p', 'call-buttons');
      [['Accept', 'call-accept', accept], ['Decline', 'call-decline', decline],
       ['Hang up', 'call-hangup', hangup]].forEach(function (b) {
        var button = el('button', b[1], b[0]);
        button.type = 'button';
        button.hidden = true;
        button.addEventListener('click', b[2]);
        buttons.appendChild(button);
      });
      var media = el('div', 'call-media');
      var remote = el('video', 'call-remote');
      remote.autoplay = true;
      remote.playsInline = true;
      var local = el('video', 'call-local');
      local.autoplay = true;
      local.muted = true;
      local.playsInline = true;
      media.appendChild(remote);
      media.appendChild(local);
      [head, say, opts, buttons, media].forEach(function (x) { panel.appendChild(x); });
      ctx.place(panel);
      return panel;
    }

    function q(cls) { return makePanel().querySelector('.' + cls); }

    function show(state, text) {
      makePanel();
      panel.setAttribute('data-state', state);
      if (current) {
        panel.setAttribute('data-call', current.id);
        panel.setAttribute('data-peer', current.peer);
        panel.setAttribute('data-role', current.role);
      }
      if (state !== 'ended') panel.removeAttribute('data-reason');
      q('call-status').textContent = text;
      q('call-accept').hidden = state !== 'incoming';
      q('call-decline').hidden = state !== 'incoming';
      q('call-hangup').hidden = !/^(calling|ringing|connecting|active)$/.test(state);
      q('call-video-choice').hidden = !/^(idle|ended|incoming)$/.test(state);
    }

    function newId() {
      var a = new Uint8Array(12);
      crypto.getRandomValues(a);
      return Array.prototype.map.call(a, function (b) {
        return ('0' + b.toString(16)).slice(-2);
      }).join('');
    }

    // signalling POSTs of one call go out one after the other (a candidate
    // never overtakes its offer); a hang-up or decline goes out even though
    // this page has ended the call already
    function signal(call, data) {
      var last = data.action === 'hangup' || data.action === 'decline';
      data.me = ctx.me();
      data.call = call.id;
      call.chain = call.chain.then(function () {
        if (call.over && !last) return null;
        return ctx.post('/api/call', data).then(function (r) {
          if (r.status === 200 || r.status === 204) return r;
          return ctx.errorText(r).then(function (t) {
            if (data.action !== 'ice' && !call.over) finish(call, null, t);
            return null;
          });
        }, function () {
          if (!call.over) finish(call, null, 'The server cannot be reached: the call ended.');
          return null;
        });
      });
      return call.chain;
    }

    function iceConfig() {
      return fetch('/api/turn?' + new URLSearchParams({me: ctx.me()}).toString(),
                   {credentials: 'same-origin'}).then(function (r) {
        if (r.status !== 200) return {iceServers: []};
        return r.json().then(function (j) {
          var config = {iceServers: j.iceServers || []};
          if (j.iceTransportPolicy === 'relay') config.iceTransportPolicy = 'relay';
          return config;
        });
      }, function () { return {iceServers: []}; });
    }

    function media(video) {
      return navigator.mediaDevices.getUserMedia({audio: true, video: !!video});
    }

    function peer(call, config) {
      var pc = call.pc = new RTCPeerConnection(config);
      window.presenceCall = {id: call.id, pc: pc, role: call.role, peer: call.peer};
      pc.onicecandidate = function (e) {
        if (e.candidate) signal(call, {action: 'ice', candidate: JSON.stringify(e.candidate)});
      };
      pc.ontrack = function (e) {
        var remote = q('call-remote');
        if (remote.srcObject !== e.streams[0]) remote.srcObject = e.streams[0];
      };
      pc.onconnectionstatechange = function () {
        if (call.over) return;
        makePanel().setAttribute('data-connection', pc.connectionState);
        if (pc.connectionState === 'connected') {
          call.state = 'active';
          show('active', 'In a call with ' + call.peer + '.');
        } else if (pc.connectionState === 'disconnected' && call.state === 'active') {
          show('active', 'The connection with ' + call.peer +
               ' is interrupted: waiting for it to come back…');
        } else if (pc.connectionState === 'failed') {
          signal(call, {action: 'hangup'});
          finish(call, null, 'The media connection failed: no route between you and ' +
                 call.peer + ', even through the relay.');
        }
      };
      call.stream.getTracks().forEach(function (t) { pc.addTrack(t, call.stream); });
      q('call-local').srcObject = call.video ? call.stream : null;
      return pc;
    }

    function flushCandidates(call) {
      var list = call.remoteIce;
      call.remoteIce = [];
      list.forEach(function (c) { call.pc.addIceCandidate(c).catch(function () {}); });
    }

    function sdpText(payload) { return payload.replace(/\r?\n/g, '\r\n') + '\r\n'; }

    function start(peerName) {
      if (current && !current.over) {
        show(current.state, 'You are in a call already: hang up first.');
        return;
      }
      var call = current = {id: newId(), peer: peerName, role: 'caller', state: 'calling',
                            chain: Promise.resolve(), remoteIce: [], over: false,
                            video: q('call-video').checked};
      show('calling', 'Calling ' + peerName + '…');
      ctx.ensureSession().then(function (ok) {
        if (!ok) { finish(call, null, 'No session: you cannot call.'); return null; }
        return Promise.all([iceConfig(), media(call.video)]);
      }).then(function (got) {
        if (!got) return;
        call.stream = got[1];
        if (call.over) { stopMedia(call); return; }
        var pc = peer(call, got[0]);
        return pc.createOffer().then(function (offer) {
          return pc.setLocalDescription(offer);
        }).then(function () {
          call.chain = call.chain.then(function () {
            if (call.over) return null;
            return ctx.post('/api/call', {me: ctx.me(), action: 'offer', to: call.peer,
                                          call: call.id, sdp: pc.localDescription.sdp})
              .then(function (r) {
                if (r.status === 200) return r.json().then(function (j) {
                  if (j.state === 'ended' && !call.over) finish(call, j.reason);
                });
                return ctx.errorText(r).then(function (t) { finish(call, null, t); });
              });
          });
        });
      }).catch(function (e) {
        finish(call, null, mediaError(e));
      });
    }

    function mediaError(e) {
      if (e && e.name === 'NotAllowedError') return 'The browser may not use your microphone: the call cannot start.';
      if (e && e.name === 'NotFoundError') return 'No microphone (or camera) found: the call cannot start.';
      return 'The call could not start: ' + (e && e.message || e);
    }

    function incoming(from, id, sdp) {
      if (current && !current.over) return;  // (the server said busy already)
      current = {id: id, peer: from, role: 'callee', state: 'incoming', offer: sdp,
                 chain: Promise.resolve(), remoteIce: [], over: false,
                 video: /\nm=video /.test('\n' + sdp)};
      q('call-video').checked = current.video;
      show('incoming', from + ' is calling you' + (current.video ? ' (video)' : '') + '.');
    }

    function accept() {
      var call = current;
      if (!call || call.over || call.state !== 'incoming') return;
      call.state = 'connecting';
      call.video = q('call-video').checked;
      show('connecting', 'Connecting with ' + call.peer + '…');
      Promise.all([iceConfig(), media(call.video)]).then(function (got) {
        call.stream = got[1];
        if (call.over) { stopMedia(call); return; }
        var pc = peer(call, got[0]);
        return pc.setRemoteDescription({type: 'offer', sdp: sdpText(call.offer)})
          .then(function () { flushCandidates(call); return pc.createAnswer(); })
          .then(function (answer) { return pc.setLocalDescription(answer); })
          .then(function () {
            return signal(call, {action: 'answer', sdp: pc.localDescription.sdp});
          });
      }).catch(function (e) {
        signal(call, {action: 'decline'});
        finish(call, null, mediaError(e));
      });
    }

    function decline() {
      var call = current;
      if (!call || call.over) return;
      signal(call, {action: 'decline'});
      finish(call, 'declined');
    }

    function hangup() {
      var call = current;
      if (!call || call.over) return;
      signal(call, {action: 'hangup'});
      finish(call, null, call.state === 'calling' || call.state === 'ringing'
             ? 'Call cancelled.' : 'You hung up.', 'hangup');
    }

    function stopMedia(call) {
      if (call.stream) call.stream.getTracks().forEach(function (t) { t.stop(); });
    }

    // the call is over: reason (a word of msg call end) or a text of our own
    function finish(call, reason, text, word) {
      if (call.over) return;
      call.over = true;
      if (call.pc) { try { call.pc.close(); } catch (e) { /* closed */ } }
      stopMedia(call);
      q('call-remote').srcObject = null;
      q('call-local').srcObject = null;
      var said = text || (REASONS[reason] ? REASONS[reason](call) : 'The call ended.');
      show('ended', said);
      panel.setAttribute('data-reason', reason || word || 'error');
      call.state = 'ended';
    }

    function frame(w, payload) {
      // w: ["msg", "call", action, peer, id, reason?]
      var action = w[2], from = w[3], id = w[4];
      if (!from || !id) return;
      if (action === 'offer') { incoming(from, id, payload); return; }
      var call = current;
      if (!call || call.id !== id || call.over) return;
      if (action === 'ringing') {
        call.state = 'ringing';
        show('ringing', 'Ringing ' + call.peer + '…');
      } else if (action === 'answer' && call.pc) {
        call.state = 'connecting';
        show('connecting', call.peer + ' answered: connecting…');
        call.pc.setRemoteDescription({type: 'answer', sdp: sdpText(payload)}).then(function () {
          flushCandidates(call);
        }, function (e) {
          signal(call, {action: 'hangup'});
          finish(call, null, 'The answer could not be used: ' + e.message);
        });
      } else if (action === 'ice') {
        var candidate;
        try { candidate = JSON.parse(payload); } catch (e) { return; }
        if (call.pc && call.pc.remoteDescription) {
          call.pc.addIceCandidate(candidate).catch(function () {});
        } else {
          call.remoteIce.push(candidate);
        }
      } else if (action === 'end') {
        finish(call, w[5] || 'hangup');
      }
    }

    window.addEventListener('pagehide', function () {
      // a call we are in ends now; one that only rings here is left to the
      // server (our other pages may still take it)
      var call = current;
      if (!call || call.over || call.state === 'incoming' || !navigator.sendBeacon) return;
      navigator.sendBeacon('/api/call', new URLSearchParams({me: ctx.me(), action: 'hangup',
                                                             call: call.id}));
    });

    makePanel();
    show('idle', 'Call (PC) on a row calls that person in this browser.');
    return {
      start: start,
      frame: frame,
      // the session ended (msg bye): so did any call
      sessionEnded: function () {
        if (current && !current.over) finish(current, null, 'Your session ended: so did the call.', 'offline');
      }
    };
  };
})();
