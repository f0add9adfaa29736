"""Who a bearer token is (static tokens and signed ServiceAccount JWTs), and the review APIs:
TokenReview, SelfSubjectReview, SelfSubjectAccessReview and the ServiceAccount token subresource."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.kubeapi_crud import ResourceVerbs
from tests.support.kubeapi_http import Request
from tests.support.kubeapi_rbac import Attributes
from tests.support.kubeapi_rbac import allowed as rbac_allowed
from tests.support.kubeapi_resources import JSON
from tests.support.kubeapi_status import FieldError, bad_request, invalid_error, not_found
from tests.support.kubeapi_store import SERVICE_ACCOUNTS, ObjectStore

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass
class Identity:
    """An authenticated user and its RBAC rules (None: allowed everything)."""

    user: str
    uid: str
    groups: list[str]
    rules: list[JSON] | None
    extra: dict[str, list[str]] = field(default_factory=dict)
    expires_at: float | None = None
    service_account: tuple[str, str, str] | None = None  # namespace, name, uid


class Authenticator:
    """Bearer tokens and the ServiceAccount token signing key."""

    api_audiences: tuple[str, ...] = (DEFAULT_ISSUER,)
    issuer = DEFAULT_ISSUER

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._tokens: dict[str, Identity] = {}
        self._signing_key: rsa.RSAPrivateKey | None = None

    def add_token(
        self,
        token: str,
        user: str = "admin",
        rules: list[JSON] | None = None,
        groups: Iterable[str] = (),
        uid: str = "",
    ) -> None:
        """Register a bearer token. ``rules`` None = allowed everything; else RBAC-like rules."""
        with self.store.lock:
            self._tokens[token] = Identity(user, uid, list(groups), copy.deepcopy(rules))

    def set_rules(self, token: str, rules: list[JSON] | None) -> None:
        """Replace a token's rules (None = allowed everything)."""
        with self.store.lock:
            self._tokens[token].rules = copy.deepcopy(rules)

    def remove_token(self, token: str) -> None:
        """Forget a token: later requests with it get 401."""
        with self.store.lock:
            self._tokens.pop(token, None)

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        """The service-account token signing key (generated on first use)."""
        with self.store.lock:
            if self._signing_key is None:
                self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._signing_key

    def issue_service_account_token(
        self,
        namespace: str,
        name: str,
        audiences: list[str] | None = None,
        ttl: int = 3600,
        rules: list[JSON] | None = None,
    ) -> str:
        """A signed projected-style SA JWT, also registered as a bearer token for that SA.
        Creates the ServiceAccount if it does not exist."""
        sa = self.store.get_object("serviceaccounts", namespace, name)
        if sa is None:
            sa = self.store.add_service_account(namespace, name)
        sa_uid = sa["metadata"]["uid"]
        now = int(time.time())
        jti = str(uuid.uuid4())
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": list(audiences) if audiences else list(self.api_audiences),
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "jti": jti,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": sa_uid},
            },
        }
        token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": "kubeapi-test"})
        with self.store.lock:
            self._tokens[token] = Identity(
                user=f"system:serviceaccount:{namespace}:{name}",
                uid=sa_uid,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                rules=copy.deepcopy(rules),
                extra={"authentication.kubernetes.io/credential-id": [f"JTI={jti}"]},
                expires_at=float(now + ttl),
                service_account=(namespace, name, sa_uid),
            )
        return token

    def identity(self, token: str) -> Identity | None:
        """Who a bearer token is, or None (unknown, expired, or its SA is gone)."""
        with self.store.lock:
            ident = self._tokens.get(token)
            if ident is None:
                return None
            if ident.expires_at is not None and time.time() >= ident.expires_at:
                return None
            if ident.service_account is not None:
                ns, name, uid = ident.service_account
                sa = self.store.kind(SERVICE_ACCOUNTS).get((ns, name))
                if sa is None or sa["metadata"]["uid"] != uid:
                    return None
            return ident

    def user_info(self, ident: Identity) -> JSON:
        info: JSON = {
            "username": ident.user,
            "groups": [*ident.groups, "system:authenticated"],
        }
        if ident.uid:
            info["uid"] = ident.uid
        if ident.extra:
            info["extra"] = copy.deepcopy(ident.extra)
        return info

    def review_token(self, token: str, audiences: list[str]) -> JSON:
        wanted = audiences or list(self.api_audiences)
        failed = {"authenticated": False, "user": {}, "error": "[invalid bearer token, unknown]"}
        if token.count(".") == 2:
            try:
                claims = jwt.decode(
                    token,
                    self.signing_key.public_key(),
                    algorithms=["RS256"],
                    issuer=self.issuer,
                    options={"verify_aud": False, "require": ["exp", "iat", "sub"]},
                    leeway=0,
                )
            except jwt.PyJWTError as exc:
                return {**failed, "error": f"[invalid bearer token, {type(exc).__name__}]"}
            token_aud = claims.get("aud") or []
            token_aud = [token_aud] if isinstance(token_aud, str) else list(token_aud)
            matched = [a for a in wanted if a in token_aud]
            if not matched:
                return {
                    **failed,
                    "error": (
                        f"[invalid bearer token, token audiences {json.dumps(token_aud)} is "
                        f"invalid for the target audiences {json.dumps(wanted)}, unknown]"
                    ),
                }
            ident = self.identity(token)
            kio = claims.get("kubernetes.io") or {}
            sa = kio.get("serviceaccount") or {}
            if ident is None:
                # signed by us but not registered (e.g. SA deleted): validate the SA like kube
                stored = self.store.get_object("serviceaccounts", kio.get("namespace"), sa.get("name", ""))
                if stored is None or stored["metadata"]["uid"] != sa.get("uid"):
                    return {**failed, "error": "[invalid bearer token, service account deleted]"}
                ident = Identity(
                    claims["sub"],
                    sa.get("uid", ""),
                    ["system:serviceaccounts", f"system:serviceaccounts:{kio.get('namespace')}"],
                    None,
                )
            return {"authenticated": True, "user": self.user_info(ident), "audiences": matched}
        ident = self.identity(token) if token else None
        if ident is None:
            return failed
        return {"authenticated": True, "user": self.user_info(ident), "audiences": wanted}


class Reviews:
    """The review endpoints (every authenticated user may ask about themselves)."""

    def __init__(self, auth: Authenticator, verbs: ResourceVerbs) -> None:
        self.auth = auth
        self.verbs = verbs

    def _review_body(self, req: Request) -> JSON:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise bad_request("couldn't get version/kind; json parse error") from exc
        if not isinstance(body, dict):
            raise bad_request("the request body must be an object")
        return body

    def review(self, req: Request, ident: Identity) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None
        body = self._review_body(req)
        spec = body.get("spec") or {}
        base = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"creationTimestamp": None}}
        if rt.plural == "selfsubjectreviews":
            return 201, {**base, "status": {"userInfo": self.auth.user_info(ident)}}
        if rt.plural == "selfsubjectaccessreviews":
            ra = spec.get("resourceAttributes")
            nra = spec.get("nonResourceAttributes")
            if ra:
                # the review's name counts for every verb, list included (as kube's authorizer
                # sees it): {verb: list, name: N} asks about a list with metadata.name=N
                attrs = Attributes(
                    ra.get("verb", ""),
                    ra.get("group", ""),
                    ra.get("resource", ""),
                    ra.get("subresource") or None,
                    ra.get("namespace") or None,
                    ra.get("name") or None,
                )
                allowed = rbac_allowed(ident.rules, attrs)
            elif nra:
                allowed = ident.rules is None or nra.get("path") in ("/version", "/api", "/apis")
            else:
                raise invalid_error(
                    rt,
                    "",
                    [
                        FieldError(
                            "Required",
                            "spec.resourceAttributes",
                            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                        )
                    ],
                )
            status: JSON = {"allowed": allowed}
            if allowed:
                status["reason"] = "allowed by the test server's rules"
            return 201, {**base, "spec": spec, "status": status}
        # TokenReview
        token = spec.get("token") or ""
        audiences = list(spec.get("audiences") or [])
        result = self.auth.review_token(token, audiences)
        return 201, {**base, "spec": spec, "status": result}  # kube echoes the spec

    def token_request(self, req: Request) -> tuple[int, Any]:
        assert req.namespace is not None and req.name
        body = self._review_body(req)
        spec = body.get("spec") or {}
        ttl = int(spec.get("expirationSeconds") or 3600)
        if ttl < 600:
            raise invalid_error(
                SERVICE_ACCOUNTS,
                req.name,
                [
                    FieldError(
                        "Invalid",
                        "spec.expirationSeconds",
                        "may not specify a duration less than 10 minutes",
                        ttl,
                    )
                ],
            )
        with self.auth.store.lock:
            self.verbs.require_namespace(req, for_create=True)
            if self.auth.store.kind(SERVICE_ACCOUNTS).get((req.namespace, req.name)) is None:
                raise not_found(SERVICE_ACCOUNTS, req.name)
        audiences = spec.get("audiences") or None
        token = self.auth.issue_service_account_token(req.namespace, req.name, audiences, ttl)
        exp = dt.datetime.fromtimestamp(time.time() + ttl, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": req.name, "namespace": req.namespace, "creationTimestamp": None},
            "spec": {**spec, "expirationSeconds": ttl},
            "status": {"token": token, "expirationTimestamp": exp},
        }
