from __future__ import annotations

from django import forms


class PauseForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Why is this workflow being stopped?"}),
        error_messages={"required": "Say why the workflow is paused; the reason goes into the audit trail."},
    )


class ResumeForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
