"""API keys in the operator console: create (the key is shown once), scopes, revoke, last use.

A key is made by `api_key_create`, the same service as `manage.py create_api_key`; only its
sha256 is stored. The plaintext is rendered into the response to the "add" form and kept nowhere
(not in a message, a cookie or the session), so it cannot be shown a second time.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from taskhub.apikeys.models import ApiKey, Scope
from taskhub.apikeys.services import api_key_create, api_key_revoke, parse_pool, parse_scopes
from taskhub.base.errors import DomainError, InvalidInput
from taskhub.console.actions import Outcome, back_to_next, run_each, selected_pks


class ApiKeyCreateForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do. units:register lets a worker register units and get their own tokens.",
    )

    class Meta:
        model = ApiKey
        fields = ("name", "scopes", "pool")

    def clean_scopes(self) -> list[str]:
        try:
            return parse_scopes(self.cleaned_data.get("scopes") or [])
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["pool"].required = False  # empty: the default pool

    def clean_pool(self) -> str:
        try:
            return parse_pool(self.cleaned_data.get("pool"))
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from None


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix_col", "scopes_col", "pool", "state_col", "created_at", "created_by", "last_used_at")
    list_filter = (RevokedFilter,)
    list_select_related = ("created_by",)
    search_fields = ("name", "prefix")
    actions = ["revoke_keys"]
    readonly_fields = (
        "name",
        "prefix_col",
        "scopes_col",
        "pool",
        "state_col",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
    )

    class Media:
        css = {"all": ("console/admin.css",)}

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the row keeps tasks' and units' owner links meaningful

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [(None, {"fields": ("name", "scopes", "pool")})]
        return [(None, {"fields": self.readonly_fields})]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    @admin.display(description="key starts with")
    def prefix_col(self, obj: ApiKey) -> SafeString:
        return format_html("<code>{}…</code>", obj.prefix)

    @admin.display(description="scopes")
    def scopes_col(self, obj: ApiKey) -> SafeString:
        return format_html_join(" ", "<code>{}</code>", ((s,) for s in obj.scopes))

    @admin.display(description="state", ordering="revoked_at")
    def state_col(self, obj: ApiKey) -> SafeString:
        if obj.revoked_at is None:
            return format_html('<span class="th-badge th-status-completed">{}</span>', "active")
        return format_html(
            '<span class="th-badge th-status-cancelled" title="revoked {}">revoked</span>', obj.revoked_at
        )

    # --- create: through the service; the plaintext goes into this one response only ------------

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            return  # nothing on a key's page is editable; scopes change by revoking and re-creating
        row, secret = api_key_create(
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            created_by=request.user,
            pool=form.cleaned_data.get("pool"),
        )
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(row, field.attname))
        obj._state.adding = False
        request._th_new_api_key = secret  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(request, "_th_new_api_key", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"API key {obj.name} created",
            "key": obj,
            "secret": secret,
            "key_url": reverse("admin:apikeys_apikey_change", args=[obj.pk]),
            "list_url": reverse("admin:apikeys_apikey_changelist"),
        }
        return TemplateResponse(request, "admin/apikeys/apikey/created.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = {"show_save": False, "show_save_and_continue": False, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)

    # --- revoke ---------------------------------------------------------------------------------

    @admin.action(
        description="Revoke selected API keys (the unit tokens they issued stop working too)", permissions=["change"]
    )
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        active = {key.pk: key for key in queryset.filter(revoked_at__isnull=True)}

        def revoke(pk: int) -> str | None:
            key = active.get(pk)
            if key is None:
                return "already revoked"
            api_key_revoke(key)
            self.log_change(request, key, "Revoked")
            return None

        outcome = run_each(selected_pks(queryset), Outcome("Revoked", "API key", "API keys"), revoke, _explain)
        outcome.notes.append(
            "Units registered with a revoked key are refused from now on (401 on heartbeat and claim): "
            "their leases fail over when the sweeper finds them silent."
        )
        outcome.report(request)
        return back_to_next(request)


def _explain(pk: int, exc: DomainError) -> str:
    return exc.message
